package pipe

import (
	"context"
	"testing"

	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

func TestConformance(t *testing.T) {
	transporttest.Run(t, func(t *testing.T, h transport.Handler) *transporttest.Device {
		return &transporttest.Device{Dial: func(ctx context.Context, _ transport.Options) (transport.Conn, error) {
			return New(h), nil
		}}
	})
}

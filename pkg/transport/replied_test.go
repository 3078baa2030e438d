package transport_test

import (
	"context"
	"testing"

	"github.com/otactl/otactl/pkg/transport"
)

// AfterReply runs its functions once, when the transport reports the reply
// sent; registered afterwards, at once; without a notice it says so.
func TestAfterReply(t *testing.T) {
	if transport.AfterReply(context.Background(), func() { t.Fatal("ran without a notice") }) {
		t.Fatal("AfterReply without a notice reported true")
	}
	ctx, replied := transport.WithReplyNotice(context.Background())
	n := 0
	if !transport.AfterReply(ctx, func() { n++ }) {
		t.Fatal("AfterReply with a notice reported false")
	}
	if n != 0 {
		t.Fatal("ran before the reply was sent")
	}
	replied()
	replied()
	if n != 1 {
		t.Fatalf("ran %d times, want 1", n)
	}
	late := false
	transport.AfterReply(ctx, func() { late = true })
	if !late {
		t.Fatal("registered after the reply was sent: did not run at once")
	}
}

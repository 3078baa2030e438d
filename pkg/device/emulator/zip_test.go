package emulator

import "github.com/otactl/otactl/pkg/ota/bundle/bundletest"

// localEntry builds a stored local entry by hand.
func localEntry(name string, data []byte) []byte { return bundletest.StoredEntry(name, data) }

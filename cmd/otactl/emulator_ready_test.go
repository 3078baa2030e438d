package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// The ready file is written last: a script that waits for it then reads
// the inventory finds the inventory there; an emulator that cannot write
// its inventory writes no ready file (it exits with the error).
func TestEmulatorReadyFileAfterInventory(t *testing.T) {
	for _, count := range []string{"1", "3"} {
		t.Run("count="+count, func(t *testing.T) {
			dir := t.TempDir()
			ready := filepath.Join(dir, "ready.json")
			cmd := exec.Command("otactl", "emulator", "--count", count, "--state-dir", filepath.Join(dir, "flash"),
				"--listen", "127.0.0.1:0", "--ready-file", ready,
				"--inventory-file", filepath.Join(dir, "no-such-dir", "devices.txt"), "--quiet")
			done := make(chan error, 1)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("the emulator ran on without its inventory file")
				}
			case <-time.After(time.Minute):
				cmd.Process.Kill()
				<-done
				t.Fatal("the emulator did not stop on an inventory file it cannot write")
			}
			if _, err := os.Stat(ready); err == nil {
				t.Error("the ready file was written although the inventory could not be: a script would go on without it")
			}
		})
	}
}

// Package serial is the serial (UART) transport of the Mongoose OS RPC
// protocol (docs/protocol.md, "Serial"), both ends: the client Dial/NewConn
// used by otactl, and the device side Serve (with OpenPTY) used by the
// emulator. The framing lives in one place, EncodeFrame and Decoder, shared
// by both ends and by the fuzz test.
//
// On the wire each frame is
//
//	"\n" `"""` JSON CRC32HEX `"""` "\n"
//
// and everything between frames is device log output.
package serial

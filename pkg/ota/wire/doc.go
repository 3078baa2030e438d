// Package wire is the OTA contract between otactl and a Mongoose OS device,
// written once for both ends: the client (pkg/ota) and the device emulator
// (pkg/device/emulator) import it, so a method name, an argument, a reply
// field or a status message cannot drift apart between them.
//
// It holds:
//
//   - the method names (OTA.*, Sys.GetInfo, Sys.Reboot, RPC.List, and the
//     emulator's default health method);
//   - the argument and reply types, with the JSON the device reads and
//     writes (field order included: what goes on the wire is byte for byte
//     what a device sends and what mos sends);
//   - the OTA.Status state enum;
//   - the device's status and error messages and codes, with one function
//     that formats and one that parses each message that carries a value
//     ("Wrong offset N, expected M", "shutting down in N ms", …);
//   - the lenient reading of replies (numbers as numeric strings, booleans
//     as 0/1) with the fields each reply must carry.
//
// docs/protocol.md describes the protocol and the device's behaviour in
// words; this package is its code. It imports nothing of otactl's, so any
// package may use it.
package wire

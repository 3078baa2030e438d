package wire

// Method names. docs/protocol.md, "Methods", says what each does.
const (
	// OTAUpdate downloads a bundle from a URL and installs it (UpdateArgs);
	// the reply waits until the update finished.
	OTAUpdate = "OTA.Update"
	// OTACommit makes the firmware on trial permanent.
	OTACommit = "OTA.Commit"
	// OTARevert abandons the firmware on trial and reboots into the revert
	// slot.
	OTARevert = "OTA.Revert"
	// OTACreateSnapshot copies the running firmware to the spare slot
	// (CreateSnapshotArgs, SnapshotReply).
	OTACreateSnapshot = "OTA.CreateSnapshot"
	// OTAGetBootState reads the boot state (BootState).
	OTAGetBootState = "OTA.GetBootState"
	// OTASetBootState changes what the next boot does (SetBootStateArgs).
	OTASetBootState = "OTA.SetBootState"
	// OTAStatus reads the updater's state (Status).
	OTAStatus = "OTA.Status"
	// OTABegin starts a pushed update (BeginArgs).
	OTABegin = "OTA.Begin"
	// OTAWrite carries one chunk of a pushed bundle (WriteArgs).
	OTAWrite = "OTA.Write"
	// OTAEnd finalises a pushed update (or aborts an incomplete one).
	OTAEnd = "OTA.End"

	// SysGetInfo describes the running firmware (SysInfo).
	SysGetInfo = "Sys.GetInfo"
	// SysReboot reboots the device (RebootArgs).
	SysReboot = "Sys.Reboot"
	// RPCList lists the methods the device serves.
	RPCList = "RPC.List"

	// AppHealth is the health method of the emulator's firmware when its
	// manifest names none (docs/emulator.md, "Firmware health"). Real
	// firmware has whatever health method its application registers.
	AppHealth = "App.Health"
)

// Methods lists every method of the OTA service and Sys.* that a device
// serves, in the order docs/protocol.md describes them.
func Methods() []string {
	return []string{OTAUpdate, OTACommit, OTARevert, OTACreateSnapshot, OTAGetBootState, OTASetBootState,
		OTAStatus, OTABegin, OTAWrite, OTAEnd, SysGetInfo, SysReboot, RPCList}
}

package bundle

import "errors"

// Error is a bundle error that a device reports with a fixed status
// message. Msg is the device's message (what OTA.Update replies); Detail
// says more for humans. errors.Is matches on Msg, so
// errors.Is(err, ErrMalformed) holds for any "Malformed archive" error.
type Error struct {
	Msg    string
	Detail string
}

// Error returns the message and the detail.
func (e *Error) Error() string {
	if e.Detail == "" {
		return e.Msg
	}
	return e.Msg + ": " + e.Detail
}

// Is reports whether target is an *Error with the same Msg.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Msg == e.Msg
}

// The device's status messages (docs/protocol.md, "The bundle as the
// device reads it"; ota-common).
var (
	// ErrMalformed: sizes in a local header are inconsistent, or the
	// archive is not a zip archive a device can stream.
	ErrMalformed = &Error{Msg: "Malformed archive"}
	// ErrBadHeader: a local file header has the wrong signature.
	ErrBadHeader = &Error{Msg: "Malformed archive (invalid file header)"}
	// ErrNotManifest: the first entry is not manifest.json.
	ErrNotManifest = &Error{Msg: "Malformed archive (manifest.json must be the first entry)"}
	// ErrTruncated: the stream ended before the central directory.
	ErrTruncated = &Error{Msg: "Malformed archive (truncated)"}
	// ErrCompressed: an entry is not stored.
	ErrCompressed = &Error{Msg: "Cannot handle compressed .zip"}
	// ErrCRC: an entry's data does not match its CRC-32.
	ErrCRC = &Error{Msg: "Invalid CRC"}
	// ErrManifestParse: manifest.json is not a valid manifest.
	ErrManifestParse = &Error{Msg: "Failed to parse manifest"}
	// ErrManifestField: platform, version, build_id or parts is missing.
	ErrManifestField = &Error{Msg: "Required manifest field missing"}
	// ErrWrongPlatform: the bundle is for another platform.
	ErrWrongPlatform = &Error{Msg: "Wrong platform"}
	// ErrDigest: a part's data does not match cs_sha1 or cs_sha256.
	ErrDigest = &Error{Msg: "Digest mismatch"}
	// ErrSize: a part's data does not match its size.
	ErrSize = &Error{Msg: "Size mismatch"}
	// ErrFileName: an entry name is too long.
	ErrFileName = &Error{Msg: "Too long file name"}
	// ErrMissingPart: a part names an entry the archive does not contain.
	ErrMissingPart = &Error{Msg: "Part data missing"}
	// ErrBadSrc: a part's src is not a flat file name.
	ErrBadSrc = &Error{Msg: "Invalid part src"}
	// ErrDuplicateSrc: two parts name the same archive entry as src.
	ErrDuplicateSrc = &Error{Msg: "Duplicate part src"}
	// ErrBadPartName: a part's name is not a flat file name (the emulator
	// stores each part's data under its name).
	ErrBadPartName = &Error{Msg: "Invalid part name"}
)

// StoredHint says how to rebuild a bundle with compressed entries, which
// no device takes (docs/commands.md, "bundle").
const StoredHint = "a device takes stored (uncompressed) entries only: rebuild the bundle stored, " +
	"with `otactl bundle create` (it stores every entry), or unzip it and zip it again with " +
	"`zip -0 -X NEW.zip manifest.json PART-FILES...` (manifest.json first)"

// StatusMessage returns the device status message for err: the Msg of the
// *Error in its chain, or err.Error() when there is none.
func StatusMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Msg
	}
	return err.Error()
}

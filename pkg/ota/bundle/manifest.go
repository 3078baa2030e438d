// Package bundle reads, verifies and creates Mongoose OS firmware bundles
// (fw.zip), written from the zip format specification (PKWARE APPNOTE) and
// the behaviour of the device's streaming updater (docs/protocol.md, "The
// bundle as the device reads it").
//
// A bundle is a zip archive whose first entry is manifest.json, followed by
// one stored (uncompressed) entry per part, with flat names. The streaming
// Reader parses such an archive from any io.Reader in constant memory, the
// way a device does during OTA: it refuses compressed entries, checks the
// local header sizes and every entry's CRC-32, and stops at the central
// directory. Create writes bundles that devices and mos accept; Inspect and
// Verify check a bundle file end to end.
//
// Errors that a device would report carry the device's exact status message
// (see Error and StatusMessage).
package bundle

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Manifest is the content of manifest.json.
type Manifest struct {
	Name           string
	Platform       string
	Description    string
	Version        string
	BuildID        string
	BuildTimestamp string
	// Parts by part name (e.g. "app", "fs", "boot", "nvs").
	Parts map[string]*Part
	// Extra holds every other top-level attribute, kept as raw JSON (for
	// example the emulator's "emulator_behavior").
	Extra map[string]json.RawMessage
}

// Part describes one part of the firmware.
type Part struct {
	Type string
	// Src is the name of the archive entry holding the part's data; empty
	// for parts that carry no data (e.g. a "fill" part).
	Src string
	// Addr, Size and Fill are nil when absent.
	Addr *int64
	Size *int64
	Fill *int64
	// CSSHA1 and CSSHA256 are lowercase hex digests of the part's data;
	// empty when absent.
	CSSHA1   string
	CSSHA256 string
	// Extra holds every other attribute of the part, as raw JSON.
	Extra map[string]json.RawMessage
}

var manifestKeys = []string{"name", "platform", "description", "version", "build_id", "build_timestamp", "parts"}

var partKeys = []string{"type", "src", "addr", "size", "fill", "cs_sha1", "cs_sha256"}

// Int64 returns a pointer to v, for the optional numeric fields of Part.
func Int64(v int64) *int64 { return &v }

// ParseManifest parses manifest.json. It does not check required fields;
// see (*Manifest).Validate.
func ParseManifest(data []byte) (*Manifest, error) {
	m := &Manifest{}
	if err := json.Unmarshal(data, m); err != nil {
		return nil, err
	}
	return m, nil
}

// Validate checks what must hold before a device writes anything: the
// required fields platform, version, build_id and a non-empty parts object
// (ErrManifestField), and for every part that carries data (has a src) a
// flat part name (ErrBadPartName), a flat src (ErrBadSrc) and a src that no
// other part names (ErrDuplicateSrc: the device would write one entry once,
// leaving the other part's data missing on flash). NewReader calls it, so
// the emulator and Verify refuse the same manifests with the same message.
func (m *Manifest) Validate() error {
	if m.Platform == "" || m.Version == "" || m.BuildID == "" || len(m.Parts) == 0 {
		return ErrManifestField
	}
	bySrc := map[string]string{}
	for _, name := range m.PartNames() {
		p := m.Parts[name]
		if p == nil || p.Src == "" {
			continue
		}
		if err := ValidPartName(name); err != nil {
			return err
		}
		if err := ValidSrc(p.Src); err != nil {
			return fmt.Errorf("part %q: %w", name, err)
		}
		if other, dup := bySrc[p.Src]; dup {
			return &Error{Msg: ErrDuplicateSrc.Msg, Detail: fmt.Sprintf("parts %q and %q both name entry %q: give each part its own entry", other, name, p.Src)}
		}
		bySrc[p.Src] = name
	}
	return nil
}

// DataParts maps the src of every part that carries data to the part's
// name. On a manifest that passed Validate (every manifest a Reader
// returns), each src maps to exactly one part.
func (m *Manifest) DataParts() map[string]string {
	bySrc := map[string]string{}
	for _, name := range m.PartNames() {
		if p := m.Parts[name]; p != nil && p.Src != "" {
			bySrc[p.Src] = name
		}
	}
	return bySrc
}

// CheckPlatform reports ErrWrongPlatform unless the manifest's platform
// starts with the device's platform, compared case-insensitively, as the
// device does.
func (m *Manifest) CheckPlatform(device string) error {
	if len(m.Platform) < len(device) || !strings.EqualFold(m.Platform[:len(device)], device) {
		return &Error{Msg: ErrWrongPlatform.Msg, Detail: fmt.Sprintf("want %q, got %q", device, m.Platform)}
	}
	return nil
}

// PartNames returns the part names in sorted order.
func (m *Manifest) PartNames() []string {
	names := make([]string, 0, len(m.Parts))
	for n := range m.Parts {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// UnmarshalJSON implements json.Unmarshaler, keeping unknown attributes.
func (m *Manifest) UnmarshalJSON(data []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return err
	}
	if raw == nil {
		return fmt.Errorf("manifest is not a JSON object")
	}
	*m = Manifest{}
	strs := map[string]*string{
		"name": &m.Name, "platform": &m.Platform, "description": &m.Description,
		"version": &m.Version, "build_id": &m.BuildID, "build_timestamp": &m.BuildTimestamp,
	}
	for k, v := range raw {
		if p, ok := strs[k]; ok {
			if err := json.Unmarshal(v, p); err != nil {
				return fmt.Errorf("manifest %q: %w", k, err)
			}
			continue
		}
		if k == "parts" {
			if err := json.Unmarshal(v, &m.Parts); err != nil {
				return fmt.Errorf("manifest parts: %w", err)
			}
			for n, p := range m.Parts {
				if p == nil {
					delete(m.Parts, n)
				}
			}
			continue
		}
		if m.Extra == nil {
			m.Extra = map[string]json.RawMessage{}
		}
		m.Extra[k] = v
	}
	return nil
}

// MarshalJSON implements json.Marshaler: known attributes first in the
// order mos writes them, then the extra ones sorted by name.
func (m *Manifest) MarshalJSON() ([]byte, error) {
	var o object
	o.add("name", m.Name)
	o.add("platform", m.Platform)
	if m.Description != "" {
		o.add("description", m.Description)
	}
	o.add("version", m.Version)
	o.add("build_id", m.BuildID)
	if m.BuildTimestamp != "" {
		o.add("build_timestamp", m.BuildTimestamp)
	}
	parts := m.Parts
	if parts == nil {
		parts = map[string]*Part{}
	}
	o.add("parts", parts)
	o.addExtra(m.Extra, manifestKeys)
	return o.bytes()
}

// Indented returns the manifest as indented JSON (two spaces), the form
// written into bundles.
func (m *Manifest) Indented() ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// UnmarshalJSON implements json.Unmarshaler. Numeric fields accept a JSON
// number or a string holding a decimal or 0x-prefixed hex integer.
func (p *Part) UnmarshalJSON(data []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return err
	}
	if raw == nil {
		return fmt.Errorf("part is not a JSON object")
	}
	*p = Part{}
	for k, v := range raw {
		var err error
		switch k {
		case "type":
			err = json.Unmarshal(v, &p.Type)
		case "src":
			err = json.Unmarshal(v, &p.Src)
		case "cs_sha1":
			err = json.Unmarshal(v, &p.CSSHA1)
		case "cs_sha256":
			err = json.Unmarshal(v, &p.CSSHA256)
		case "addr":
			p.Addr, err = lenientInt(v)
		case "size":
			p.Size, err = lenientInt(v)
		case "fill":
			p.Fill, err = lenientInt(v)
		default:
			if p.Extra == nil {
				p.Extra = map[string]json.RawMessage{}
			}
			p.Extra[k] = v
		}
		if err != nil {
			return fmt.Errorf("part %q: %w", k, err)
		}
	}
	return nil
}

// MarshalJSON implements json.Marshaler.
func (p *Part) MarshalJSON() ([]byte, error) {
	var o object
	if p.Type != "" {
		o.add("type", p.Type)
	}
	if p.Src != "" {
		o.add("src", p.Src)
	}
	if p.Addr != nil {
		o.add("addr", *p.Addr)
	}
	if p.Size != nil {
		o.add("size", *p.Size)
	}
	if p.Fill != nil {
		o.add("fill", *p.Fill)
	}
	if p.CSSHA1 != "" {
		o.add("cs_sha1", p.CSSHA1)
	}
	if p.CSSHA256 != "" {
		o.add("cs_sha256", p.CSSHA256)
	}
	o.addExtra(p.Extra, partKeys)
	return o.bytes()
}

func lenientInt(v json.RawMessage) (*int64, error) {
	s := strings.TrimSpace(string(v))
	if s == "null" {
		return nil, nil
	}
	if strings.HasPrefix(s, `"`) {
		if err := json.Unmarshal(v, &s); err != nil {
			return nil, err
		}
		n, err := strconv.ParseInt(strings.TrimSpace(s), 0, 64)
		if err != nil {
			return nil, fmt.Errorf("not an integer: %q", s)
		}
		return &n, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		f, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil || f != float64(int64(f)) {
			return nil, fmt.Errorf("not an integer: %.40s", s)
		}
		n = int64(f)
	}
	return &n, nil
}

// object builds a JSON object with keys in insertion order.
type object struct {
	buf bytes.Buffer
	err error
}

func (o *object) add(k string, v any) {
	if o.err != nil {
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		o.err = err
		return
	}
	o.addRaw(k, b)
}

func (o *object) addRaw(k string, v []byte) {
	if o.buf.Len() == 0 {
		o.buf.WriteByte('{')
	} else {
		o.buf.WriteByte(',')
	}
	kb, _ := json.Marshal(k)
	o.buf.Write(kb)
	o.buf.WriteByte(':')
	o.buf.Write(v)
}

func (o *object) addExtra(extra map[string]json.RawMessage, known []string) {
	keys := make([]string, 0, len(extra))
	for k := range extra {
		skip := false
		for _, kk := range known {
			if k == kk {
				skip = true
			}
		}
		if !skip {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := extra[k]
		if !json.Valid(v) {
			o.err = fmt.Errorf("attribute %q is not valid JSON", k)
			return
		}
		o.addRaw(k, v)
	}
}

func (o *object) bytes() ([]byte, error) {
	if o.err != nil {
		return nil, o.err
	}
	if o.buf.Len() == 0 {
		return []byte("{}"), nil
	}
	o.buf.WriteByte('}')
	return o.buf.Bytes(), nil
}

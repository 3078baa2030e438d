package frame

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestParseRequestAndResponse(t *testing.T) {
	f, err := Parse([]byte(`{"src":"mos","id":1711787588495,"method":"Sys.GetInfo","params":{"x":1},"v":2,"nr":3,"deadline":5,"timeout":7,"trace":true,"unknown":{"a":[1,2]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if f.ID != 1711787588495 || f.Src != "mos" || f.Method != "Sys.GetInfo" || string(f.Params) != `{"x":1}` {
		t.Fatalf("parsed %+v", f)
	}
	if !f.IsRequest() {
		t.Fatal("request not recognised")
	}
	r, err := Parse([]byte(`{"id":5,"src":"esp32_1","dst":"mos","result":null}`))
	if err != nil {
		t.Fatal(err)
	}
	if r.IsRequest() || r.ID != 5 || string(r.Result) != "null" || r.Error != nil {
		t.Fatalf("parsed %+v", r)
	}
}

func TestParseLenient(t *testing.T) {
	cases := []struct {
		in     string
		id     int64
		errObj *Error
	}{
		{`{"id":"42"}`, 42, nil},
		{`{"id":1.099511627776e12}`, 1099511627776, nil},
		{`{"id":7,"error":{"code":0,"message":"Update applied, finalizing"}}`, 7, &Error{Code: 0, Message: "Update applied, finalizing"}},
		{`{"id":7,"error":{"code":-1}}`, 7, &Error{Code: -1}},
		{`{"id":7,"error":{"code":"404","message":"No handler for X"}}`, 7, &Error{Code: 404, Message: "No handler for X"}},
		{`{"id":7,"error":"boom"}`, 7, &Error{Code: -1, Message: "boom"}},
		{`{"id":7,"src":5,"method":["x"],"error":null}`, 7, nil},
	}
	for _, c := range cases {
		f, err := Parse([]byte(c.in))
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		if f.ID != c.id || !reflect.DeepEqual(f.Error, c.errObj) {
			t.Errorf("%s: got id %d error %+v", c.in, f.ID, f.Error)
		}
	}
}

func TestParseRejects(t *testing.T) {
	for _, in := range []string{``, `[]`, `"x"`, `{`, `{"id":"abc"}`, `{"id":1.5}`, `{"id":1}x`} {
		if _, err := Parse([]byte(in)); err == nil {
			t.Errorf("Parse(%q) succeeded", in)
		}
	}
}

func TestArgsLegacyName(t *testing.T) {
	f, _ := Parse([]byte(`{"id":1,"method":"M","args":{"a":1}}`))
	if string(f.ParamsOrArgs()) != `{"a":1}` {
		t.Fatalf("args not used: %s", f.ParamsOrArgs())
	}
	f, _ = Parse([]byte(`{"id":1,"method":"M","params":{"p":1},"args":{"a":1}}`))
	if string(f.ParamsOrArgs()) != `{"p":1}` {
		t.Fatalf("params not preferred: %s", f.ParamsOrArgs())
	}
	f, _ = Parse([]byte(`{"id":1,"method":"M","params":null}`))
	if f.ParamsOrArgs() != nil {
		t.Fatal("null params should read as none")
	}
}

// The request frame for `mos call Sys.GetInfo '{"x":1}'`: the fields and values
// mos sends. mos writes "src" before "id" (its Frame struct order); a device
// looks fields up by name, so only the CRC, computed over the bytes as sent,
// depends on the order.
func TestMarshalGolden(t *testing.T) {
	f := &Frame{ID: 1711787588495, Src: "mos", Method: "Sys.GetInfo", Params: json.RawMessage(`{"x":1}`)}
	b, err := Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"src":"mos","id":1711787588495,"method":"Sys.GetInfo","params":{"x":1}}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
	// A reply with a null result keeps "result":null.
	b, _ = Marshal(&Frame{ID: 2, Src: "dev", Dst: "mos", Result: json.RawMessage("null")})
	if string(b) != `{"src":"dev","dst":"mos","id":2,"result":null}` {
		t.Fatalf("got %s", b)
	}
}

func TestMarshalASCIIOnly(t *testing.T) {
	f := &Frame{ID: 1, Method: "X", Params: json.RawMessage(`{"s":"Grüße 🚀 \u00e9"}`)}
	b, err := Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range b {
		if c >= 0x80 {
			t.Fatalf("byte %d is 0x%x in %s", i, c, b)
		}
	}
	if !strings.Contains(string(b), `Gr\u00fc\u00dfe \ud83d\ude80`) {
		t.Fatalf("unexpected escaping: %s", b)
	}
	var back struct{ S string }
	g, _ := Parse(b)
	if err := json.Unmarshal(g.Params, &back); err != nil || back.S != "Grüße 🚀 é" {
		t.Fatalf("round trip: %q %v", back.S, err)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"src":"mos","id":1711787588495,"method":"Sys.GetInfo","params":{"x":1}}`,
		`{"id":5,"src":"esp32_1","dst":"mos","result":{"active_slot":0,"is_committed":true}}`,
		`{"id":"12","error":{"code":"0x10","message":"x"}}`,
		`{"id":1,"args":[1,2],"auth":{"realm":"r","username":"u","nonce":1,"cnonce":2,"response":"ab"}}`,
		`{"id":1e3,"result":"\u00e9\ud83d\ude80"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := Parse(data)
		if err != nil {
			return
		}
		out, err := Marshal(fr)
		if err != nil {
			// Raw fields are copied from valid JSON, so encoding cannot fail.
			t.Fatalf("marshal of parsed frame failed: %v", err)
		}
		for _, c := range out {
			if c >= 0x80 {
				t.Fatalf("non-ASCII output %q", out)
			}
		}
		again, err := Parse(out)
		if err != nil {
			t.Fatalf("re-parse of %s: %v", out, err)
		}
		if again.ID != fr.ID || again.Method != fr.Method || again.Src != fr.Src || again.Dst != fr.Dst ||
			!reflect.DeepEqual(again.Error, fr.Error) {
			t.Fatalf("round trip changed the frame:\n%+v\n%+v", fr, again)
		}
	})
}

package imagebuild

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func TestMBRBootCode(t *testing.T) {
	boot := pattern(sectorSize, 1)
	boot[bootDriveCheck], boot[510], boot[511] = 0xeb, 0x55, 0xaa
	mbr := pattern(sectorSize, 100)
	const coreLBA = 0x0102030405060708
	got, err := mbrBootCode(boot, mbr, coreLBA)
	if err != nil {
		t.Fatalf("mbrBootCode() = %v", err)
	}
	for _, r := range []struct {
		name     string
		from, to int
		want     []byte
	}{
		{"jump", 0, 3, boot[0:3]},
		{"BPB", 3, 0x5a, mbr[3:0x5a]},
		{"boot.img before kernel sector", 0x5a, 0x5c, boot[0x5a:0x5c]},
		{"kernel sector", 0x5c, 0x64, binary.LittleEndian.AppendUint64(nil, coreLBA)},
		{"boot drive", 0x64, 0x65, []byte{0xff}},
		{"boot.img before drive check", 0x65, 0x66, boot[0x65:0x66]},
		{"drive check", 0x66, 0x68, []byte{0x90, 0x90}},
		{"boot code", 0x68, 0x1b8, boot[0x68:0x1b8]},
		{"disk signature and partition table", 0x1b8, 0x1fe, mbr[0x1b8:0x1fe]},
		{"boot signature", 0x1fe, 0x200, []byte{0x55, 0xaa}},
	} {
		if !bytes.Equal(got[r.from:r.to], r.want) {
			t.Errorf("%s (%#x-%#x) = %x, want %x", r.name, r.from, r.to, got[r.from:r.to], r.want)
		}
	}
}

func TestMBRBootCodeRejects(t *testing.T) {
	good := make([]byte, sectorSize)
	good[bootDriveCheck], good[510], good[511] = 0xeb, 0x55, 0xaa
	noSig := bytes.Clone(good)
	noSig[511] = 0
	noJmp := bytes.Clone(good)
	noJmp[bootDriveCheck] = 0
	for name, boot := range map[string][]byte{"short": good[:100], "no signature": noSig, "no drive check": noJmp} {
		if _, err := mbrBootCode(boot, make([]byte, sectorSize), 2048); err == nil {
			t.Errorf("mbrBootCode(%s boot.img) = nil error, want one", name)
		}
	}
}

func TestPlaceCore(t *testing.T) {
	core := pattern(3*sectorSize+10, 3) // four sectors once padded
	got, err := placeCore(core, 2048)
	if err != nil {
		t.Fatalf("placeCore() = %v", err)
	}
	if len(got) != 4*sectorSize {
		t.Fatalf("placeCore() is %d bytes, want %d", len(got), 4*sectorSize)
	}
	if start := binary.LittleEndian.Uint64(got[0x1f4:]); start != 2049 {
		t.Errorf("block list start = %d, want 2049", start)
	}
	if n := binary.LittleEndian.Uint16(got[0x1fc:]); n != 3 {
		t.Errorf("block list length = %d, want 3", n)
	}
	if seg := binary.LittleEndian.Uint16(got[0x1fe:]); seg != 0x820 {
		t.Errorf("block list segment = %#x, want 0x820", seg)
	}
	if end := got[0x1e8:0x1f4]; !bytes.Equal(end, make([]byte, 12)) {
		t.Errorf("block list terminator = %x, want zeros", end)
	}
	if !bytes.Equal(got[:0x1e8], core[:0x1e8]) || !bytes.Equal(got[sectorSize:len(core)], core[sectorSize:]) {
		t.Errorf("placeCore() changed core.img outside the block list")
	}
	if !bytes.Equal(got[len(core):], make([]byte, len(got)-len(core))) {
		t.Errorf("placeCore() padding is not zeros")
	}

	if _, err := placeCore(make([]byte, sectorSize), 2048); err == nil {
		t.Errorf("placeCore(one sector) = nil error, want one")
	}
	if _, err := placeCore(make([]byte, (maxCoreSectors+1)*sectorSize), 2048); err == nil {
		t.Errorf("placeCore(%d sectors) = nil error, want one", maxCoreSectors+1)
	}
}

package imagebuild

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/renameio/v2"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/dustin/go-humanize"
	"github.com/google/uuid"

	"undervdi/internal/bootlayout"
)

// The disk layout. Partitions start on MiB boundaries, as SD cards and
// partitioning tools like.
const (
	sectorSize    = 512
	mib           = 1 << 20
	biosBootStart = 1 * mib
	biosBootSize  = 1 * mib // core.img is ~140 KiB; GRUB can load at most ~450 KiB
	espStart      = biosBootStart + biosBootSize
	// The backup GPT takes the last 33 sectors; reserve a whole MiB so the
	// image size stays a round number.
	diskTail = 1 * mib
	// FAT32 needs at least 65525 clusters, 33 MiB at go-diskfs's 512-byte
	// clusters for small volumes; 64 MiB is a round number above that.
	minESPSize = 64 * mib
	// Free room on the EFI system partition: a quarter of the content plus
	// this, for background images added by hand and FAT's own tables.
	espSlack = 16 * mib
	// FAT records file sizes in 32 bits.
	fatMaxFileSize = 1<<32 - 1
)

// GPT partition numbers and names.
const (
	biosBootPartition = 1
	espPartition      = 2
	biosBootName      = "BIOS boot"
)

// guidNamespace makes the image's GUIDs name-based UUIDs (RFC 9562 v5) of
// its content, so the same inputs give the same GUIDs.
var guidNamespace = uuid.MustParse("6c1b7e0a-5d0e-4c57-9a55-2f3b0f6e4b1d")

// entry is one directory or file the builder writes: copied from src on the
// build host, or data it generated.
type entry struct {
	path string // slash-separated, relative to the partition or output directory
	dir  bool
	src  string
	data []byte
	size int64
}

func (e entry) open() (io.ReadCloser, error) {
	if e.src == "" {
		return io.NopCloser(bytes.NewReader(e.data)), nil
	}
	return os.Open(e.src)
}

// diskPlan is everything the disk image will hold, and its size.
type diskPlan struct {
	esp      []entry // in the order they are written
	espSize  int64
	size     int64
	grub     *grubImages
	volumeID uint32 // the FAT's, which GRUB and kioskd look for
}

// planDisk lists the EFI system partition's content and sizes the image.
func planDisk(in Inputs, grub *grubImages, volumeID uint32) (*diskPlan, error) {
	kiosk := func(name string) string { return path.Join(bootlayout.Dir, name) }
	site, more, err := siteEntry(in, kiosk(bootlayout.SiteInitrd))
	if err != nil {
		return nil, err
	}
	esp := append([]entry{
		{path: "EFI/BOOT/BOOTX64.EFI", data: grub.efiImg},
		{path: strings.TrimPrefix(grubConfigPath, "/"), data: []byte(grubConfig(in.Cmdline, bootlayout.VolumeID(volumeID), more...))},
		{path: kiosk(bootlayout.Kernel), src: in.Kernel},
		{path: kiosk(bootlayout.Initramfs), src: in.Initramfs},
	}, site...)
	if in.Config != "" {
		esp = append(esp, entry{path: kiosk(bootlayout.Config), src: in.Config})
	}
	if in.Background != "" {
		bg, err := treeEntries(in.Background, kiosk(bootlayout.Background))
		if err != nil {
			return nil, err
		}
		esp = append(esp, bg...)
	}
	var content int64
	for i := range esp {
		e := &esp[i]
		if e.src != "" {
			st, err := os.Stat(e.src)
			if err != nil {
				return nil, err
			}
			e.size = st.Size()
			if e.size > fatMaxFileSize {
				return nil, fmt.Errorf("%s is %s, more than FAT can hold in one file", e.src, humanize.IBytes(uint64(e.size)))
			}
		} else {
			e.size = int64(len(e.data))
		}
		// Count whole 4 KiB clusters (go-diskfs uses 512 bytes below
		// 260 MiB, 4 KiB above), plus one for directory entries.
		content += roundUp(e.size, 4096) + 4096
	}
	espSize := max(minESPSize, roundUp(content+content/4+espSlack, mib))
	return &diskPlan{
		esp:      esp,
		espSize:  espSize,
		size:     espStart + espSize + diskTail,
		grub:     grub,
		volumeID: volumeID,
	}, nil
}

// treeEntries lists the directory tree at root, to be written under dst, in
// lexical order. Symbolic links to files are followed; anything but
// directories and regular files is an error.
func treeEntries(root, dst string) ([]entry, error) {
	var es []entry
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		e := entry{path: path.Join(dst, filepath.ToSlash(rel))}
		switch {
		case st.IsDir() && d.Type()&fs.ModeSymlink != 0:
			return fmt.Errorf("%s: links to directories are not followed", p)
		case st.IsDir():
			e.dir = true
		case st.Mode().IsRegular():
			e.src = p
		default:
			return fmt.Errorf("%s: neither a file nor a directory", p)
		}
		es = append(es, e)
		return nil
	})
	return es, err
}

// writeDisk writes the image to a temporary file beside dst and renames it
// into place when it is complete, so dst never holds half an image.
func (b *Builder) writeDisk(ctx context.Context, plan *diskPlan, dst string) (err error) {
	dir := filepath.Dir(dst)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := b.checkSpace(dir, plan.size); err != nil {
		return err
	}
	key, err := plan.contentKey(b.Epoch)
	if err != nil {
		return err
	}
	b.log().Info("writing disk image", "path", dst, "size", humanize.IBytes(uint64(plan.size)))
	start := time.Now()

	f, err := renameio.NewPendingFile(dst, renameio.WithTempDir(dir), renameio.WithStaticPermissions(0o644))
	if err != nil {
		return err
	}
	defer f.Cleanup()
	if err := f.Truncate(plan.size); err != nil { // sparse: unwritten space takes no room
		return err
	}
	d, err := diskfs.OpenBackend(file.New(f.File, false), diskfs.WithSectorSize(sectorSize))
	if err != nil {
		return err
	}
	if err := writePartitionTable(d, plan, key); err != nil {
		return err
	}
	if err := writeBIOSBoot(f.File, plan.grub); err != nil {
		return err
	}
	if err := b.writeESP(ctx, d, plan); err != nil {
		return err
	}
	if err := setFATVolumeID(f.File, espStart, plan.volumeID); err != nil {
		return err
	}
	if err := f.CloseAtomicallyReplace(); err != nil {
		return err
	}
	b.log().Info("disk image written", "path", dst, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// contentKey hashes everything the image is made of: the epoch, core.img and
// each entry of the EFI system partition with its content. GUIDs and the FAT
// volume ID derive from it.
func (p *diskPlan) contentKey(epoch time.Time) ([]byte, error) {
	h := sha256.New()
	fmt.Fprintf(h, "epoch %d\n", epoch.Unix())
	fmt.Fprintf(h, "core.img %x\n", sha256.Sum256(p.grub.coreImg))
	for _, e := range p.esp {
		if e.dir {
			fmt.Fprintf(h, "dir %s\n", e.path)
			continue
		}
		r, err := e.open()
		if err != nil {
			return nil, err
		}
		fh := sha256.New()
		_, err = io.Copy(fh, r)
		r.Close()
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", e.src, err)
		}
		fmt.Fprintf(h, "file %s %x\n", e.path, fh.Sum(nil))
	}
	return h.Sum(nil), nil
}

// volumeID derives the FAT volume ID from everything the image is built
// from (not from GRUB's images or grub.cfg, which contain it): each build
// of different inputs gets its own, and the same inputs the same.
func volumeID(in Inputs, epoch time.Time) (uint32, error) {
	h := sha256.New()
	fmt.Fprintf(h, "FAT volume ID\x00epoch %d\ncmdline %q\n", epoch.Unix(), in.Cmdline)
	for _, f := range []string{in.Kernel, in.Initramfs, in.Config, in.CA} {
		if f == "" {
			continue
		}
		if err := hashInto(h, f); err != nil {
			return 0, err
		}
	}
	if in.Background != "" {
		bg, err := treeEntries(in.Background, bootlayout.Background)
		if err != nil {
			return 0, err
		}
		for _, e := range bg {
			fmt.Fprintf(h, "%s\n", e.path)
			if e.src != "" {
				if err := hashInto(h, e.src); err != nil {
					return 0, err
				}
			}
		}
	}
	return binary.LittleEndian.Uint32(h.Sum(nil)), nil
}

func hashInto(h io.Writer, file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(h, f)
	return err
}

// guid derives a GUID for one part of the image from its content key.
func guid(key []byte, what string) string {
	return uuid.NewSHA1(guidNamespace, append([]byte(what+"\x00"), key...)).String()
}

func writePartitionTable(d *disk.Disk, plan *diskPlan, key []byte) error {
	table := &gpt.Table{
		LogicalSectorSize:  sectorSize,
		PhysicalSectorSize: sectorSize,
		ProtectiveMBR:      true,
		GUID:               guid(key, "disk"),
		Partitions: []*gpt.Partition{
			{
				Index: biosBootPartition,
				Start: biosBootStart / sectorSize,
				Size:  biosBootSize,
				Type:  gpt.BIOSBoot,
				Name:  biosBootName,
				GUID:  guid(key, "bios boot partition"),
			},
			{
				Index: espPartition,
				Start: espStart / sectorSize,
				Size:  uint64(plan.espSize),
				Type:  gpt.EFISystemPartition,
				Name:  bootlayout.Label,
				GUID:  guid(key, "EFI system partition"),
			},
		},
	}
	if err := d.Partition(table); err != nil {
		return fmt.Errorf("writing the partition table: %w", err)
	}
	return nil
}

// writeBIOSBoot puts core.img into the BIOS boot partition and boot.img into
// the MBR, pointing at it.
func writeBIOSBoot(f *os.File, grub *grubImages) error {
	const coreLBA = biosBootStart / sectorSize
	core, err := placeCore(grub.coreImg, coreLBA)
	if err != nil {
		return err
	}
	if len(core) > biosBootSize {
		return fmt.Errorf("core.img is %d bytes, the BIOS boot partition %d", len(core), biosBootSize)
	}
	if _, err := f.WriteAt(core, biosBootStart); err != nil {
		return err
	}
	mbr := make([]byte, sectorSize)
	if _, err := f.ReadAt(mbr, 0); err != nil {
		return err
	}
	mbr, err = mbrBootCode(grub.bootImg, mbr, coreLBA)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(mbr, 0)
	return err
}

// writeESP creates the FAT32 file system and copies the entries onto it.
func (b *Builder) writeESP(ctx context.Context, d *disk.Disk, plan *diskPlan) error {
	return withSourceDateEpoch(b.Epoch, func() error {
		fat, err := d.CreateFilesystem(disk.FilesystemSpec{
			Partition:    espPartition,
			FSType:       filesystem.TypeFat32,
			VolumeLabel:  bootlayout.Label,
			Reproducible: true,
		})
		if err != nil {
			return fmt.Errorf("creating the FAT file system: %w", err)
		}
		buf := make([]byte, 8*mib)
		for _, e := range plan.esp {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := writeFATEntry(fat, e, buf); err != nil {
				return fmt.Errorf("writing /%s to the EFI system partition: %w", e.path, err)
			}
		}
		return nil
	})
}

// writeFATEntry writes one entry in chunks of len(buf): go-diskfs walks the
// file's cluster chain and rewrites the FAT on every Write, so small writes
// would be slow.
func writeFATEntry(fat filesystem.FileSystem, e entry, buf []byte) error {
	p := "/" + e.path
	if e.dir {
		return fat.Mkdir(p)
	}
	if parent := path.Dir(p); parent != "/" {
		if err := fat.Mkdir(parent); err != nil {
			return err
		}
	}
	r, err := e.open()
	if err != nil {
		return err
	}
	defer r.Close()
	w, err := fat.OpenFile(p, os.O_CREATE|os.O_RDWR)
	if err != nil {
		return err
	}
	defer w.Close()
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// sourceDateEpoch serialises FAT builds: go-diskfs stamps directory entries
// (including "." and "..", and the volume label) with the time it reads from
// SOURCE_DATE_EPOCH in the environment, and has no other way to be told.
var sourceDateEpoch sync.Mutex

func withSourceDateEpoch(epoch time.Time, f func() error) error {
	sourceDateEpoch.Lock()
	defer sourceDateEpoch.Unlock()
	const name = "SOURCE_DATE_EPOCH"
	old, had := os.LookupEnv(name)
	os.Setenv(name, strconv.FormatInt(epoch.Unix(), 10))
	defer func() {
		if had {
			os.Setenv(name, old)
		} else {
			os.Unsetenv(name)
		}
	}()
	return f()
}

// FAT32 boot sector fields (Microsoft's FAT specification).
const (
	fatBackupBootSector = 0x32 // u16: sector of the boot sector's copy
	fatExtendedBootSig  = 0x42 // 0x29 when the volume ID and label follow
	fatVolumeID         = 0x43 // u32
)

// setFATVolumeID gives the file system its volume ID (its "UUID" in Linux's
// /dev/disk/by-uuid), in the boot sector and its backup. go-diskfs's
// reproducible mode writes zero there.
func setFATVolumeID(f *os.File, start int64, volumeID uint32) error {
	boot := make([]byte, sectorSize)
	if _, err := f.ReadAt(boot, start); err != nil {
		return err
	}
	if boot[fatExtendedBootSig] != 0x29 {
		return fmt.Errorf("FAT boot sector has no extended boot signature")
	}
	id := binary.LittleEndian.AppendUint32(nil, volumeID)
	backup := int64(binary.LittleEndian.Uint16(boot[fatBackupBootSector:]))
	for _, sector := range []int64{0, backup} {
		if _, err := f.WriteAt(id, start+sector*sectorSize+fatVolumeID); err != nil {
			return err
		}
	}
	return nil
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

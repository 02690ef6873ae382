package virt

import (
	"bytes"
	"context"
	"fmt"
	"html"

	"github.com/digitalocean/go-libvirt"

	"undervdi/server/domxml"
)

// Replication: each host serves clones of its own copy of a version. libvirt
// copies volumes within one host (virStorageVolCreateXMLFrom) but not from
// one host to another, so a copy to another host goes through the broker as
// two of libvirt's storage streams: the source host's libvirtd reads the
// volume's file (virStorageVolDownload) and the destination's writes it
// into its versions pool (virStorageVolUpload). The bytes cross the hosts'
// backend network inside the broker's TLS (or SSH) connections to the two
// libvirtds; no host opens a port to another, and nothing but libvirt runs
// on the hosts.

// ReplicateDisk copies disk src of a version published on host from into
// this host's versions pool as volume name: a read-only qcow2 image whose
// bytes are the source file's (a qcow2 file holds what the guest wrote, so
// this moves the disk's allocation, not its virtual size). progress hears
// the bytes written so far, and the total. A failed or cancelled copy
// deletes what it wrote here.
func (h *Host) ReplicateDisk(ctx context.Context, from *Host, src domxml.Disk, name string, progress func(written, total uint64)) (path string, err error) {
	sl, err := from.conn(ctx)
	if err != nil {
		return "", fmt.Errorf("the source host %s: %w", from.URI(), err)
	}
	l, pool, err := h.versionStore(ctx)
	if err != nil {
		return "", err
	}
	var total uint64
	err = withVolume(sl, src.Path, func(vol libvirt.StorageVol) (ferr error) {
		// The file's own length ("physical"), which is what a download reads.
		_, _, physical, err := sl.StorageVolGetInfoFlags(vol, uint32(libvirt.StorageVolGetPhysical))
		if err != nil {
			return wrap(sl, err, "the size of %s", src.Path)
		}
		total = physical
		// Made empty and raw, it takes exactly the bytes the upload writes;
		// libvirt reads the qcow2 format back from them.
		spec := fmt.Sprintf(`<volume type='file'><name>%s</name><capacity unit='bytes'>0</capacity>`+
			`<target><format type='raw'/><permissions><mode>%s</mode></permissions></target></volume>`,
			html.EscapeString(name), versionMode)
		dst, err := l.StorageVolCreateXML(pool, spec, 0)
		if err != nil {
			return wrap(l, err, "making %s in %s", name, pool.Name)
		}
		defer func() {
			if ferr != nil {
				// Best effort: a copy left without its template is deleted
				// by the next reconcile, as a publish's would be.
				l.StorageVolDelete(dst, 0)
				path = ""
			}
		}()
		if path, err = l.StorageVolGetPath(dst); err != nil {
			return wrap(l, err, "the copy %s", name)
		}
		if err := stream(ctx, sl, vol, l, dst, total, progress); err != nil {
			return err
		}
		// libvirt reads the copy's format (qcow2) from its bytes now.
		return wrap(l, l.StoragePoolRefresh(pool, 0), "refreshing %s", pool.Name)
	})
	if err != nil {
		return "", err
	}
	return path, nil
}

// chunk is how much of a volume one download or upload stream carries.
// go-libvirt cannot abort a stream midway (it has no virStreamAbort), so a
// copy is many short streams: it may be cancelled between any two, and at
// most two chunks are in memory.
const chunk = 8 << 20

// stream copies total bytes of a volume on one libvirt into a volume on
// another, a chunk at a time, downloading the next while the last uploads,
// and reports progress at the start and after each chunk.
func stream(ctx context.Context, sl *libvirt.Libvirt, src libvirt.StorageVol, dl *libvirt.Libvirt, dst libvirt.StorageVol,
	total uint64, progress func(written, total uint64)) error {
	progress(0, total) // the total, at once
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	chunks := make(chan []byte) // one uploading, one downloaded waiting: two in memory
	var downErr error
	go func() {
		defer close(chunks)
		for off := uint64(0); off < total; off += chunk {
			if downErr = ctx.Err(); downErr != nil {
				return
			}
			n := min(chunk, total-off)
			var b bytes.Buffer
			b.Grow(int(n))
			if err := sl.StorageVolDownload(src, &b, off, n, 0); err != nil {
				downErr = wrap(sl, err, "reading %s", src.Name)
				return
			}
			if uint64(b.Len()) != n {
				downErr = fmt.Errorf("reading %s at %d: %d bytes, want %d", src.Name, off, b.Len(), n)
				return
			}
			select {
			case chunks <- b.Bytes():
			case <-ctx.Done():
			}
		}
	}()
	var written uint64
	var upErr error
	for b := range chunks {
		if upErr == nil {
			upErr = ctx.Err()
		}
		if upErr == nil {
			upErr = dl.StorageVolUpload(dst, bytes.NewReader(b), written, uint64(len(b)), 0)
		}
		if upErr != nil {
			cancel() // and drain: the download ends at its next chunk
			continue
		}
		written += uint64(len(b))
		progress(written, total)
	}
	switch {
	case upErr == nil && downErr == nil && written != total && ctx.Err() != nil:
		return ctx.Err() // cancelled as the last chunk came
	case upErr != nil:
		return wrap(dl, upErr, "writing %s", dst.Name)
	case downErr != nil:
		return downErr
	case written != total:
		return fmt.Errorf("copied %d bytes of %s, want %d", written, src.Name, total)
	}
	return nil
}

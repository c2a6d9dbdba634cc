package guest

import (
	"fmt"
	"io"
)

// cpioWriter writes the "newc" cpio format the kernel unpacks into its
// initramfs: a 110-byte ASCII header of thirteen 8-digit hex fields, the
// NUL-terminated name, padding to 4 bytes, the data, padding to 4 bytes; the
// archive ends with an entry named "TRAILER!!!".
type cpioWriter struct {
	w     io.Writer
	ino   uint32
	err   error
	total int64
}

const (
	cpioModeDir  = 0o040000
	cpioModeReg  = 0o100000
	cpioModeChr  = 0o020000
	cpioModeLink = 0o120000
	cpioTrailer  = "TRAILER!!!"
)

type cpioEntry struct {
	name                 string
	mode                 uint32 // file type and permission bits
	rdevMajor, rdevMinor uint32
	data                 []byte
}

func (c *cpioWriter) write(e cpioEntry) error {
	if c.err != nil {
		return c.err
	}
	c.ino++
	nlink := uint32(1)
	if e.mode&0o170000 == cpioModeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.ino, e.mode, 0, 0, nlink, 0, len(e.data), 0, 0,
		e.rdevMajor, e.rdevMinor, len(e.name)+1, 0)
	c.put([]byte(hdr))
	c.put(append([]byte(e.name), 0))
	c.pad()
	c.put(e.data)
	c.pad()
	return c.err
}

func (c *cpioWriter) close() error {
	return c.write(cpioEntry{name: cpioTrailer})
}

func (c *cpioWriter) put(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.total += int64(n)
	c.err = err
}

func (c *cpioWriter) pad() {
	if r := c.total % 4; r != 0 {
		c.put(make([]byte, 4-r))
	}
}

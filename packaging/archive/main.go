// Command archive writes a release archive of a directory, the same bytes
// from the same files every time: entries sorted, owned by root, stamped
// with one time (the commit's). A name ending in .zip makes a zip (for
// Windows), anything else a gzipped tar. Used by packaging/dist.sh.
//
//	go run ./packaging/archive OUT DIR UNIX-SECONDS
package main

import (
	"archive/tar"
	"archive/zip"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: archive OUT DIR UNIX-SECONDS")
		os.Exit(2)
	}
	secs, err := strconv.ParseInt(os.Args[3], 10, 64)
	if err == nil {
		err = write(os.Args[1], os.Args[2], time.Unix(secs, 0).UTC())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "archive:", err)
		os.Exit(1)
	}
}

// entry is one file or directory, its name under DIR's base name.
type entry struct {
	name string
	path string
	info fs.FileInfo
}

func write(out, dir string, stamp time.Time) (err error) {
	var entries []entry
	base := filepath.Base(dir)
	err = filepath.Walk(dir, func(path string, info fs.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		name := base
		if rel != "." {
			name = base + "/" + filepath.ToSlash(rel)
		}
		entries = append(entries, entry{name, path, info})
		return nil
	}) // Walk visits in lexical order: the order is fixed.
	if err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	if strings.HasSuffix(out, ".zip") {
		return writeZip(f, entries, stamp)
	}
	return writeTar(f, entries, stamp)
}

// mode is what an archive says of a file: executable or not, nothing else.
func mode(info fs.FileInfo) int64 {
	switch {
	case info.IsDir():
		return 0o755
	case info.Mode()&0o111 != 0:
		return 0o755
	}
	return 0o644
}

func writeTar(w io.Writer, entries []entry, stamp time.Time) error {
	z, _ := gzip.NewWriterLevel(w, gzip.BestCompression)
	t := tar.NewWriter(z)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: mode(e.info), ModTime: stamp, Uname: "root", Gname: "root", Format: tar.FormatPAX}
		if e.info.IsDir() {
			h.Typeflag, h.Name = tar.TypeDir, e.name+"/"
		} else {
			h.Typeflag, h.Size = tar.TypeReg, e.info.Size()
		}
		if err := t.WriteHeader(h); err != nil {
			return err
		}
		if !e.info.IsDir() {
			if err := copyFile(t, e.path); err != nil {
				return err
			}
		}
	}
	if err := t.Close(); err != nil {
		return err
	}
	return z.Close()
}

func writeZip(w io.Writer, entries []entry, stamp time.Time) error {
	z := zip.NewWriter(w)
	for _, e := range entries {
		h := &zip.FileHeader{Name: e.name, Method: zip.Deflate, Modified: stamp}
		if e.info.IsDir() {
			h.Name, h.Method = e.name+"/", zip.Store
		}
		h.SetMode(fs.FileMode(mode(e.info)) | e.info.Mode()&fs.ModeDir)
		fw, err := z.CreateHeader(h)
		if err != nil {
			return err
		}
		if !e.info.IsDir() {
			if err := copyFile(fw, e.path); err != nil {
				return err
			}
		}
	}
	return z.Close()
}

func copyFile(w io.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}

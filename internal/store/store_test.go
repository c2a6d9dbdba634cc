package store

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestAll(t *testing.T) {
	db, err := Open(filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	type rec struct{ N int }
	for _, k := range []string{"b", "a"} {
		if err := db.Put("things", k, rec{N: int(k[0])}); err != nil {
			t.Fatal(err)
		}
	}
	var got []rec
	if err := db.View(func(tx *Tx) error {
		var err error
		got, err = All[rec](tx, "things")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].N != 'a' || got[1].N != 'b' {
		t.Errorf("All = %v, want a's then b's", got)
	}
	if err := db.View(func(tx *Tx) error {
		none, err := All[rec](tx, "missing")
		if err != nil || len(none) != 0 {
			t.Errorf("All of a missing bucket = %v, %v", none, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Put("things", "c", "not a record"); err != nil {
		t.Fatal(err)
	}
	err = db.View(func(tx *Tx) error {
		_, err := All[rec](tx, "things")
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "things/c") {
		t.Errorf("All over a bad record: %v, want an error naming things/c", err)
	}
}

// Package store is flickd's persistent state: one bbolt file holding JSON
// records in named buckets. Every write is a transaction, so a crash never
// leaves a half-written record.
package store

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/flick-vm/flick/internal/errdefs"
)

// DB is an open store.
type DB struct {
	bolt *bolt.DB
}

// Open opens or creates the store file at path.
func Open(path string) (*DB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w (is another flickd running on this root?)", path, err)
	}
	return &DB{bolt: db}, nil
}

// Close closes the file.
func (d *DB) Close() error { return d.bolt.Close() }

// Tx is a read-write or read-only transaction.
type Tx struct {
	tx *bolt.Tx
}

// Update runs fn in a read-write transaction; an error from fn rolls it back.
func (d *DB) Update(fn func(*Tx) error) error {
	return d.bolt.Update(func(tx *bolt.Tx) error { return fn(&Tx{tx: tx}) })
}

// View runs fn in a read-only transaction.
func (d *DB) View(fn func(*Tx) error) error {
	return d.bolt.View(func(tx *bolt.Tx) error { return fn(&Tx{tx: tx}) })
}

// Get decodes the record at bucket/key into v, or returns an error of class
// errdefs.ErrNotFound.
func (t *Tx) Get(bucket, key string, v any) error {
	b := t.tx.Bucket([]byte(bucket))
	var raw []byte
	if b != nil {
		raw = b.Get([]byte(key))
	}
	if raw == nil {
		return errdefs.NotFound("%s %q not found", bucket, key)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("decode %s/%s: %w", bucket, key, err)
	}
	return nil
}

// Put stores v as JSON at bucket/key.
func (t *Tx) Put(bucket, key string, v any) error {
	b, err := t.tx.CreateBucketIfNotExists([]byte(bucket))
	if err != nil {
		return err
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s/%s: %w", bucket, key, err)
	}
	return b.Put([]byte(key), raw)
}

// Delete removes bucket/key; a missing key is not an error.
func (t *Tx) Delete(bucket, key string) error {
	b := t.tx.Bucket([]byte(bucket))
	if b == nil {
		return nil
	}
	return b.Delete([]byte(key))
}

// ForEach calls fn with every key and raw JSON value of bucket, in key order.
func (t *Tx) ForEach(bucket string, fn func(key string, raw []byte) error) error {
	b := t.tx.Bucket([]byte(bucket))
	if b == nil {
		return nil
	}
	return b.ForEach(func(k, v []byte) error { return fn(string(k), v) })
}

// Get is a one-record read transaction.
func (d *DB) Get(bucket, key string, v any) error {
	return d.View(func(tx *Tx) error { return tx.Get(bucket, key, v) })
}

// Put is a one-record write transaction.
func (d *DB) Put(bucket, key string, v any) error {
	return d.Update(func(tx *Tx) error { return tx.Put(bucket, key, v) })
}

// Delete is a one-record delete transaction.
func (d *DB) Delete(bucket, key string) error {
	return d.Update(func(tx *Tx) error { return tx.Delete(bucket, key) })
}

// All decodes every record of bucket, in key order.
func All[T any](t *Tx, bucket string) ([]T, error) {
	var out []T
	err := t.ForEach(bucket, func(key string, raw []byte) error {
		var v T
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("decode %s/%s: %w", bucket, key, err)
		}
		out = append(out, v)
		return nil
	})
	return out, err
}

// Package errdefs holds the few classes of error that the API edge maps to
// HTTP status codes. Wrap them with fmt.Errorf("...: %w", errdefs.ErrNotFound)
// or build one with the helpers, which keep the message as the user sees it.
package errdefs

import (
	"errors"
	"fmt"
)

// The classes.
var (
	ErrNotFound        = errors.New("not found")
	ErrAlreadyExists   = errors.New("already exists")
	ErrInvalidArgument = errors.New("invalid argument")
	ErrConflict        = errors.New("conflict")
	ErrUnavailable     = errors.New("unavailable")
	ErrForbidden       = errors.New("forbidden")
	ErrTimeout         = errors.New("timeout")
)

type classed struct {
	class error
	msg   string
	cause error
}

func (e *classed) Error() string { return e.msg }

func (e *classed) Is(target error) bool { return target == e.class }

func (e *classed) Unwrap() error { return e.cause }

func newf(class error, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return &classed{class: class, msg: err.Error(), cause: errors.Unwrap(err)}
}

// NotFound returns an error of class ErrNotFound with the given message.
func NotFound(format string, args ...any) error { return newf(ErrNotFound, format, args...) }

// AlreadyExists returns an error of class ErrAlreadyExists.
func AlreadyExists(format string, args ...any) error {
	return newf(ErrAlreadyExists, format, args...)
}

// InvalidArgument returns an error of class ErrInvalidArgument.
func InvalidArgument(format string, args ...any) error {
	return newf(ErrInvalidArgument, format, args...)
}

// Conflict returns an error of class ErrConflict.
func Conflict(format string, args ...any) error { return newf(ErrConflict, format, args...) }

// Unavailable returns an error of class ErrUnavailable.
func Unavailable(format string, args ...any) error { return newf(ErrUnavailable, format, args...) }

// Forbidden returns an error of class ErrForbidden.
func Forbidden(format string, args ...any) error { return newf(ErrForbidden, format, args...) }

// Timeout returns an error of class ErrTimeout: something did not happen in
// the time it was given.
func Timeout(format string, args ...any) error { return newf(ErrTimeout, format, args...) }

package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// DefaultHost is where flickd listens unless told otherwise.
const DefaultHost = "unix:///run/flick/flickd.sock"

// Error is an error answered by the daemon: a 4xx or 5xx status with an
// ErrorResponse body, or (Status 0) an error reported in-band at the end of
// an NDJSON stream whose 200 header was already sent.
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string { return e.Message }

// IsNotFound reports whether err is a 404 answer of the daemon.
func IsNotFound(err error) bool { return statusOf(err) == http.StatusNotFound }

// IsUnavailable reports whether err is a 503 answer of the daemon.
func IsUnavailable(err error) bool { return statusOf(err) == http.StatusServiceUnavailable }

// IsConflict reports whether err is a 409 answer of the daemon.
func IsConflict(err error) bool { return statusOf(err) == http.StatusConflict }

func statusOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

// Client talks to flickd. Its methods are safe for concurrent use.
type Client struct {
	base  string // http://flickd for a unix socket
	where string // what to name in "cannot reach" errors
	http  *http.Client
}

// NewClient returns a client for host: unix:///path/to/flickd.sock,
// http://host:port, or "" for DefaultHost.
func NewClient(host string) (*Client, error) {
	if host == "" {
		host = DefaultHost
	}
	u, err := url.Parse(host)
	if err != nil {
		return nil, fmt.Errorf("invalid host %q: %w", host, err)
	}
	switch u.Scheme {
	case "unix":
		path := u.Path
		if path == "" {
			path = u.Opaque
		}
		if path == "" {
			return nil, fmt.Errorf("invalid host %q: no socket path (want unix:///path/to/flickd.sock)", host)
		}
		var d net.Dialer
		tr := &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return d.DialContext(ctx, "unix", path)
			},
			DisableCompression: true,
		}
		return &Client{base: "http://flickd", where: path, http: &http.Client{Transport: tr}}, nil
	case "http", "tcp":
		if u.Host == "" {
			return nil, fmt.Errorf("invalid host %q: no address (want http://host:port)", host)
		}
		base := "http://" + u.Host
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.DisableCompression = true
		return &Client{base: base, where: base, http: &http.Client{Transport: tr}}, nil
	default:
		return nil, fmt.Errorf("invalid host %q: want unix:///path/to/flickd.sock or http://host:port", host)
	}
}

// do sends a request and returns the response of a 2xx answer; any other
// answer becomes an *Error.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, contentType string, body io.Reader) (*http.Response, error) {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf("cannot reach flickd at %s: %w (is flickd running? start it with: flickd)", c.where, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var er ErrorResponse
	msg := strings.TrimSpace(string(data))
	if json.Unmarshal(data, &er) == nil && er.Error != "" {
		msg = er.Error
	}
	if msg == "" {
		msg = fmt.Sprintf("flickd answered %s", resp.Status)
	}
	return nil, &Error{Status: resp.StatusCode, Message: msg}
}

// doJSON sends in (if not nil) as JSON and decodes the answer into out (if
// not nil).
func (c *Client) doJSON(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body io.Reader
	ct := ""
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body, ct = bytes.NewReader(data), MediaJSON
	}
	resp, err := c.do(ctx, method, path, q, ct, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

func instancePath(id string, tail ...string) string {
	p := "/v1/instances/" + url.PathEscape(id)
	for _, t := range tail {
		p += "/" + t
	}
	return p
}

func imagePath(ref string) string { return "/v1/images/" + url.PathEscape(ref) }

func boolQuery(q url.Values, key string, v bool) {
	if v {
		q.Set(key, "true")
	}
}

// Version returns the daemon's version.
func (c *Client) Version(ctx context.Context) (Version, error) {
	var v Version
	err := c.doJSON(ctx, "GET", "/v1/version", nil, nil, &v)
	return v, err
}

// ImageList returns the images present locally.
func (c *Client) ImageList(ctx context.Context) ([]Image, error) {
	var imgs []Image
	err := c.doJSON(ctx, "GET", "/v1/images", nil, nil, &imgs)
	return imgs, err
}

// ImageInspect returns one image by reference or digest.
func (c *Client) ImageInspect(ctx context.Context, ref string) (Image, error) {
	var img Image
	err := c.doJSON(ctx, "GET", imagePath(ref), nil, nil, &img)
	return img, err
}

// ImageRemove deletes an image; force deletes it even if instances use it.
func (c *Client) ImageRemove(ctx context.Context, ref string, force bool) error {
	q := url.Values{}
	boolQuery(q, "force", force)
	return c.doJSON(ctx, "DELETE", imagePath(ref), q, nil, nil)
}

// ImagePull pulls ref, calling progress (if not nil) for every line of the
// stream, and returns the pulled image.
func (c *Client) ImagePull(ctx context.Context, ref string, progress func(Progress)) (Image, error) {
	data, err := json.Marshal(PullRequest{Ref: ref})
	if err != nil {
		return Image{}, err
	}
	resp, err := c.do(ctx, "POST", "/v1/images/pull", nil, MediaJSON, bytes.NewReader(data))
	if err != nil {
		return Image{}, err
	}
	imgs, err := readProgress(resp, progress)
	if err != nil {
		return Image{}, err
	}
	if len(imgs) == 0 {
		return Image{}, fmt.Errorf("pull %s: the stream ended without an image", ref)
	}
	return imgs[len(imgs)-1], nil
}

// ImageLoad loads the tarball or oci-layout directory at req.Path on the
// daemon's host and returns the loaded images.
func (c *Client) ImageLoad(ctx context.Context, req LoadRequest, progress func(Progress)) ([]Image, error) {
	data, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	resp, err := c.do(ctx, "POST", "/v1/images/load", nil, MediaJSON, bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	return readProgress(resp, progress)
}

// ImageLoadTar uploads a docker-archive or OCI tarball and returns the
// loaded images.
func (c *Client) ImageLoadTar(ctx context.Context, tarball io.Reader, tag string, progress func(Progress)) ([]Image, error) {
	q := url.Values{}
	if tag != "" {
		q.Set("tag", tag)
	}
	resp, err := c.do(ctx, "POST", "/v1/images/load", q, MediaTar, tarball)
	if err != nil {
		return nil, err
	}
	return readProgress(resp, progress)
}

// readProgress reads an NDJSON stream of Progress, returning the images of
// its final lines or the error reported in-band.
func readProgress(resp *http.Response, progress func(Progress)) ([]Image, error) {
	s := newStream[Progress](resp)
	defer s.Close()
	var imgs []Image
	for s.Next() {
		p := s.Value()
		if progress != nil {
			progress(p)
		}
		if p.Error != "" {
			return imgs, &Error{Message: p.Error}
		}
		if p.Image != nil {
			imgs = append(imgs, *p.Image)
		}
	}
	return imgs, s.Err()
}

// InstanceList returns the instances that are starting, running or
// stopping; all returns every instance, and size fills in their SizeBytes.
func (c *Client) InstanceList(ctx context.Context, all, size bool) ([]Instance, error) {
	q := url.Values{}
	boolQuery(q, "all", all)
	boolQuery(q, "size", size)
	var list []Instance
	err := c.doJSON(ctx, "GET", "/v1/instances", q, nil, &list)
	return list, err
}

// InstanceCreate creates an instance without starting it. It fails with a
// 404 *Error whose message starts with "image ... not found locally" when
// the image has not been pulled.
func (c *Client) InstanceCreate(ctx context.Context, req CreateRequest) (Instance, error) {
	var inst Instance
	err := c.doJSON(ctx, "POST", "/v1/instances", nil, req, &inst)
	return inst, err
}

// InstanceInspect returns an instance by id, unique id prefix or name.
func (c *Client) InstanceInspect(ctx context.Context, id string) (Instance, error) {
	var inst Instance
	err := c.doJSON(ctx, "GET", instancePath(id), nil, nil, &inst)
	return inst, err
}

// InstanceStart boots an instance and returns once its app has started,
// with the boot phases.
func (c *Client) InstanceStart(ctx context.Context, id string) (Instance, error) {
	var inst Instance
	err := c.doJSON(ctx, "POST", instancePath(id, "start"), nil, nil, &inst)
	return inst, err
}

// InstanceStop sends the stop signal, waits up to timeout seconds (a
// negative timeout means the instance's stop_timeout), then kills; it returns
// after the instance has exited.
func (c *Client) InstanceStop(ctx context.Context, id string, timeout int) (Instance, error) {
	q := url.Values{}
	if timeout >= 0 {
		q.Set("timeout", strconv.Itoa(timeout))
	}
	var inst Instance
	err := c.doJSON(ctx, "POST", instancePath(id, "stop"), q, nil, &inst)
	return inst, err
}

// InstanceKill sends signal (a name such as TERM or SIGTERM, or a number;
// "" means KILL) to the app.
func (c *Client) InstanceKill(ctx context.Context, id, signal string) (Instance, error) {
	q := url.Values{}
	if signal != "" {
		q.Set("signal", signal)
	}
	var inst Instance
	err := c.doJSON(ctx, "POST", instancePath(id, "kill"), q, nil, &inst)
	return inst, err
}

// InstanceRestart stops (as InstanceStop does) and starts an instance.
func (c *Client) InstanceRestart(ctx context.Context, id string, timeout int) (Instance, error) {
	q := url.Values{}
	if timeout >= 0 {
		q.Set("timeout", strconv.Itoa(timeout))
	}
	var inst Instance
	err := c.doJSON(ctx, "POST", instancePath(id, "restart"), q, nil, &inst)
	return inst, err
}

// InstanceStandby saves a running instance and ends its VM.
func (c *Client) InstanceStandby(ctx context.Context, id string) (Instance, error) {
	var in Instance
	err := c.doJSON(ctx, "POST", instancePath(id, "standby"), nil, nil, &in)
	return in, err
}

// InstanceFork makes n clones of a running instance and starts them. On a
// partial failure it returns the clones with the error: those that failed
// are in state failed.
func (c *Client) InstanceFork(ctx context.Context, id string, n int) ([]Instance, error) {
	var out []Instance
	err := c.doJSON(ctx, "POST", instancePath(id, "fork"), nil, ForkRequest{Count: n}, &out)
	return out, err
}

// InstanceResume starts a standing-by instance from its saved state.
func (c *Client) InstanceResume(ctx context.Context, id string) (Instance, error) {
	var in Instance
	err := c.doJSON(ctx, "POST", instancePath(id, "resume"), nil, nil, &in)
	return in, err
}

// InstanceWait blocks until the instance is not running and returns its
// exit code.
func (c *Client) InstanceWait(ctx context.Context, id string) (WaitResponse, error) {
	var w WaitResponse
	err := c.doJSON(ctx, "POST", instancePath(id, "wait"), nil, nil, &w)
	return w, err
}

// InstanceRemove deletes an instance; force kills it first if it runs.
func (c *Client) InstanceRemove(ctx context.Context, id string, force bool) error {
	q := url.Values{}
	boolQuery(q, "force", force)
	return c.doJSON(ctx, "DELETE", instancePath(id), q, nil, nil)
}

// LogsOptions selects what InstanceLogs streams.
type LogsOptions struct {
	Follow bool
	Tail   int // the last Tail records; negative for all
	// Stdout and Stderr select the streams; both false means both.
	Stdout, Stderr bool
}

// InstanceLogs opens the log stream of an instance. It returns once the
// daemon has answered; read the records with Next and Value, then Close.
func (c *Client) InstanceLogs(ctx context.Context, id string, opts LogsOptions) (*Stream[LogRecord], error) {
	q := url.Values{}
	boolQuery(q, "follow", opts.Follow)
	if opts.Tail >= 0 {
		q.Set("tail", strconv.Itoa(opts.Tail))
	}
	if opts.Stdout || opts.Stderr {
		q.Set("stdout", strconv.FormatBool(opts.Stdout))
		q.Set("stderr", strconv.FormatBool(opts.Stderr))
	}
	resp, err := c.do(ctx, "GET", instancePath(id, "logs"), q, "", nil)
	if err != nil {
		return nil, err
	}
	return newStream[LogRecord](resp), nil
}

// InstanceConsole returns the kernel and VMM console output of an instance:
// the last tail lines, or all of it when tail is negative. Close the reader.
func (c *Client) InstanceConsole(ctx context.Context, id string, tail int) (io.ReadCloser, error) {
	q := url.Values{}
	if tail >= 0 {
		q.Set("tail", strconv.Itoa(tail))
	}
	resp, err := c.do(ctx, "GET", instancePath(id, "console"), q, "", nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// Stream reads an NDJSON answer one value at a time:
//
//	for s.Next() { use(s.Value()) }
//	if err := s.Err(); err != nil { ... }
type Stream[T any] struct {
	body io.ReadCloser
	dec  *json.Decoder
	cur  T
	err  error
}

func newStream[T any](resp *http.Response) *Stream[T] {
	return &Stream[T]{body: resp.Body, dec: json.NewDecoder(resp.Body)}
}

// Next reads the next value; it returns false at the end of the stream or
// on an error.
func (s *Stream[T]) Next() bool {
	if s.err != nil {
		return false
	}
	var v T
	if err := s.dec.Decode(&v); err != nil {
		if !errors.Is(err, io.EOF) {
			s.err = fmt.Errorf("read stream: %w", err)
		}
		return false
	}
	s.cur = v
	return true
}

// Value returns the value read by the last Next.
func (s *Stream[T]) Value() T { return s.cur }

// Err returns the error that ended the stream, nil at a clean end.
func (s *Stream[T]) Err() error { return s.err }

// Close releases the connection; it ends a follow stream early.
func (s *Stream[T]) Close() error { return s.body.Close() }

// NetworkList lists the networks.
func (c *Client) NetworkList(ctx context.Context) ([]Network, error) {
	var list []Network
	err := c.doJSON(ctx, "GET", "/v1/networks", nil, nil, &list)
	return list, err
}

// NetworkCreate makes a network.
func (c *Client) NetworkCreate(ctx context.Context, req NetworkCreateRequest) (Network, error) {
	var n Network
	err := c.doJSON(ctx, "POST", "/v1/networks", nil, req, &n)
	return n, err
}

// NetworkInspect returns a network by name or id.
func (c *Client) NetworkInspect(ctx context.Context, name string) (Network, error) {
	var n Network
	err := c.doJSON(ctx, "GET", "/v1/networks/"+url.PathEscape(name), nil, nil, &n)
	return n, err
}

// NetworkRemove removes a network that no instance uses.
func (c *Client) NetworkRemove(ctx context.Context, name string) error {
	return c.doJSON(ctx, "DELETE", "/v1/networks/"+url.PathEscape(name), nil, nil, nil)
}

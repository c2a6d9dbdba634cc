package api

// Route is one operation of flickd's REST API. Pattern uses the syntax of
// net/http.ServeMux, so the daemon registers a route with
//
//	mux.HandleFunc(r.Method+" "+r.Pattern, handlers[r.Name])
//
// and reads the wildcards with Request.PathValue("id") or PathValue("ref").
// {id} is an instance id, a unique id prefix or a name; {ref} is a
// path-escaped image reference or digest; {name} a network's name or id.
type Route struct {
	Name    string // operationId in openapi.yaml
	Method  string
	Pattern string
}

// Routes lists every operation of the API. openapi.yaml documents exactly
// these; a test checks both ways.
var Routes = []Route{
	{"version", "GET", "/v1/version"},

	{"imageList", "GET", "/v1/images"},
	{"imageInspect", "GET", "/v1/images/{ref}"},
	{"imageRemove", "DELETE", "/v1/images/{ref}"},
	{"imagePull", "POST", "/v1/images/pull"},
	{"imageLoad", "POST", "/v1/images/load"},

	{"instanceList", "GET", "/v1/instances"},
	{"instanceCreate", "POST", "/v1/instances"},
	{"instanceInspect", "GET", "/v1/instances/{id}"},
	{"instanceStart", "POST", "/v1/instances/{id}/start"},
	{"instanceStop", "POST", "/v1/instances/{id}/stop"},
	{"instanceKill", "POST", "/v1/instances/{id}/kill"},
	{"instanceRestart", "POST", "/v1/instances/{id}/restart"},
	{"instanceStandby", "POST", "/v1/instances/{id}/standby"},
	{"instanceResume", "POST", "/v1/instances/{id}/resume"},
	{"instanceFork", "POST", "/v1/instances/{id}/fork"},
	{"instanceWait", "POST", "/v1/instances/{id}/wait"},
	{"instanceRemove", "DELETE", "/v1/instances/{id}"},
	{"instanceLogs", "GET", "/v1/instances/{id}/logs"},
	{"instanceConsole", "GET", "/v1/instances/{id}/console"},
	{"instanceExec", "GET", "/v1/instances/{id}/exec"},
	{"instanceStat", "GET", "/v1/instances/{id}/stat"},
	{"instanceArchiveGet", "GET", "/v1/instances/{id}/archive"},
	{"instanceArchivePut", "PUT", "/v1/instances/{id}/archive"},

	{"networkList", "GET", "/v1/networks"},
	{"networkCreate", "POST", "/v1/networks"},
	{"networkInspect", "GET", "/v1/networks/{name}"},
	{"networkRemove", "DELETE", "/v1/networks/{name}"},
}

// Media types of the API's bodies.
const (
	MediaJSON   = "application/json"
	MediaNDJSON = "application/x-ndjson"
	MediaTar    = "application/x-tar"
	MediaText   = "text/plain; charset=utf-8"
)

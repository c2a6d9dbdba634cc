package api

import (
	"net/http"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

func loadSpec(t *testing.T) map[string]any {
	t.Helper()
	data, err := os.ReadFile("openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var spec map[string]any
	if err := yaml.Unmarshal(data, &spec); err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	if v, _ := spec["openapi"].(string); !strings.HasPrefix(v, "3.0.") {
		t.Fatalf("openapi: got %q, want 3.0.x", v)
	}
	return spec
}

func TestOpenAPIDocumentsExactlyRoutes(t *testing.T) {
	spec := loadSpec(t)
	paths, ok := spec["paths"].(map[string]any)
	if !ok {
		t.Fatal("openapi.yaml has no paths")
	}
	documented := map[string]string{} // "METHOD pattern" -> operationId
	for path, item := range paths {
		for key, op := range item.(map[string]any) {
			switch key {
			case "get", "put", "post", "delete", "patch", "head", "options":
			default:
				continue
			}
			id, _ := op.(map[string]any)["operationId"].(string)
			documented[strings.ToUpper(key)+" "+path] = id
		}
	}
	routed := map[string]string{}
	for _, r := range Routes {
		k := r.Method + " " + r.Pattern
		if _, dup := routed[k]; dup {
			t.Errorf("api.Routes lists %s twice", k)
		}
		routed[k] = r.Name
	}
	for k, name := range routed {
		id, ok := documented[k]
		switch {
		case !ok:
			t.Errorf("route %s is in api.Routes but not in openapi.yaml", k)
		case id != name:
			t.Errorf("route %s: operationId %q in openapi.yaml, name %q in api.Routes", k, id, name)
		}
	}
	for k := range documented {
		if _, ok := routed[k]; !ok {
			t.Errorf("route %s is in openapi.yaml but not in api.Routes", k)
		}
	}
}

// TestRoutesRegister checks that the daemon can register every route on a
// ServeMux without a pattern conflict.
func TestRoutesRegister(t *testing.T) {
	mux := http.NewServeMux()
	for _, r := range Routes {
		mux.HandleFunc(r.Method+" "+r.Pattern, func(http.ResponseWriter, *http.Request) {})
	}
	for _, tc := range []struct{ method, path, want string }{
		{"POST", "/v1/images/pull", "POST /v1/images/pull"},
		{"GET", "/v1/images/127.0.0.1:5000%2Fteam%2Fapp:1.2", "GET /v1/images/{ref}"},
		{"DELETE", "/v1/instances/web", "DELETE /v1/instances/{id}"},
		{"POST", "/v1/instances/3f2a/start", "POST /v1/instances/{id}/start"},
	} {
		req, _ := http.NewRequest(tc.method, "http://flickd"+tc.path, nil)
		if _, pat := mux.Handler(req); pat != tc.want {
			t.Errorf("%s %s: matched %q, want %q", tc.method, tc.path, pat, tc.want)
		}
	}
}

// TestOpenAPIRefsResolve checks that every $ref names a component.
func TestOpenAPIRefsResolve(t *testing.T) {
	spec := loadSpec(t)
	comps := spec["components"].(map[string]any)
	var walk func(v any, at string)
	walk = func(v any, at string) {
		switch v := v.(type) {
		case map[string]any:
			if ref, ok := v["$ref"].(string); ok {
				parts := strings.Split(strings.TrimPrefix(ref, "#/components/"), "/")
				if !strings.HasPrefix(ref, "#/components/") || len(parts) != 2 {
					t.Errorf("%s: unsupported $ref %q", at, ref)
				} else if sect, _ := comps[parts[0]].(map[string]any); sect[parts[1]] == nil {
					t.Errorf("%s: $ref %q names nothing", at, ref)
				}
			}
			for k, e := range v {
				walk(e, at+"/"+k)
			}
		case []any:
			for _, e := range v {
				walk(e, at)
			}
		}
	}
	walk(spec, "")
}

// TestOpenAPISchemasMatchTypes checks that each schema lists exactly the
// JSON fields of the Go type of the same name.
func TestOpenAPISchemasMatchTypes(t *testing.T) {
	spec := loadSpec(t)
	schemas := spec["components"].(map[string]any)["schemas"].(map[string]any)
	types := map[string]any{
		"ErrorResponse":  ErrorResponse{},
		"Version":        Version{},
		"ImageConfig":    ImageConfig{},
		"Image":          Image{},
		"PullRequest":    PullRequest{},
		"LoadRequest":    LoadRequest{},
		"Progress":       Progress{},
		"InstanceConfig": InstanceConfig{},
		"CreateRequest":  CreateRequest{},
		"Instance":       Instance{},
		"WaitResponse":   WaitResponse{},
		"LogRecord":      LogRecord{},
		"ExecRequest":    ExecRequest{},
		"ExecExit":       ExecExit{},
		"PathStat":       PathStat{},

		"PortMapping":          PortMapping{},
		"Network":              Network{},
		"NetworkCreateRequest": NetworkCreateRequest{},
		"ForkRequest":          ForkRequest{},
	}
	for name, v := range types {
		s, ok := schemas[name].(map[string]any)
		if !ok {
			t.Errorf("schema %s missing from openapi.yaml", name)
			continue
		}
		got := schemaFields(t, schemas, s)
		want := jsonFields(reflect.TypeOf(v))
		sort.Strings(got)
		sort.Strings(want)
		if !slices.Equal(got, want) {
			t.Errorf("schema %s: properties %v, Go fields %v", name, got, want)
		}
	}
	for name := range schemas {
		if _, ok := types[name]; !ok {
			t.Errorf("schema %s has no Go type in this test", name)
		}
	}
}

func schemaFields(t *testing.T, schemas map[string]any, s map[string]any) []string {
	var out []string
	if ref, ok := s["$ref"].(string); ok {
		return schemaFields(t, schemas, schemas[strings.TrimPrefix(ref, "#/components/schemas/")].(map[string]any))
	}
	if all, ok := s["allOf"].([]any); ok {
		for _, e := range all {
			out = append(out, schemaFields(t, schemas, e.(map[string]any))...)
		}
	}
	props, _ := s["properties"].(map[string]any)
	for k := range props {
		out = append(out, k)
	}
	return out
}

func jsonFields(typ reflect.Type) []string {
	var out []string
	for f := range typ.Fields() {
		if f.Anonymous {
			out = append(out, jsonFields(f.Type)...)
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out = append(out, name)
	}
	return out
}

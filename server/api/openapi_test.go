package api

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
)

// spec is docs/openapi.yaml, for checking the server's exchanges.
type spec struct {
	doc    *openapi3.T
	router routers.Router
	routes []route
}

func loadSpec(t *testing.T) *spec {
	t.Helper()
	_, here, _, _ := runtime.Caller(0)
	path := filepath.Join(filepath.Dir(here), "..", "..", "docs", "openapi.yaml")
	doc, err := openapi3.NewLoader().LoadFromFile(path)
	if err != nil {
		t.Fatalf("docs/openapi.yaml: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("docs/openapi.yaml is not a valid OpenAPI document: %v", err)
	}
	doc.Servers = nil // match paths on any host
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return &spec{doc: doc, router: router}
}

// check validates one exchange against the document: the route is there,
// the request is one it describes, and the answer's status, headers and
// body are among the ones it lists. Credentials are the server's to check.
func (s *spec) check(t *testing.T, req *http.Request, body []byte, resp *http.Response, out []byte) {
	t.Helper()
	r := req.Clone(context.Background())
	r.Body = io.NopCloser(bytes.NewReader(body))
	route, params, err := s.router.FindRoute(r)
	if err != nil && resp.StatusCode == http.StatusNotFound && !strings.HasPrefix(req.URL.Path, "/v1/") {
		return // a path outside the API, refused
	}
	if err != nil {
		t.Errorf("%s %s is not in docs/openapi.yaml: %v", req.Method, req.URL.Path, err)
		return
	}
	in := &openapi3filter.RequestValidationInput{Request: r, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
	// Requests the server must refuse are sent on purpose; only the
	// ones it accepts must fit the document.
	if resp.StatusCode/100 == 2 {
		if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
			t.Errorf("%s %s was accepted (%d) but docs/openapi.yaml does not describe that request: %v", req.Method, req.URL.Path, resp.StatusCode, err)
		}
	}
	if err := openapi3filter.ValidateResponse(context.Background(), &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header, Body: io.NopCloser(bytes.NewReader(out)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true},
	}); err != nil {
		t.Errorf("%s %s answered %d %s, which docs/openapi.yaml does not describe: %v", req.Method, req.URL.Path, resp.StatusCode, clip(out), err)
	}
}

func clip(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "…"
	}
	return string(b)
}

// TestOpenAPIDocumentsEveryRoute: the document and the server list the
// same routes, and the document marks the same ones public.
func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	s := loadSpec(t)
	srv := &Server{Metrics: http.NotFoundHandler()}
	var served, documented []string
	public := map[string]bool{}
	for _, rt := range srv.routes() {
		key := rt.method + " " + rt.path
		served = append(served, key)
		public[key] = rt.need == ""
	}
	for path, item := range s.doc.Paths.Map() {
		for method, op := range item.Operations() {
			key := method + " " + path
			documented = append(documented, key)
			open := op.Security != nil && len(*op.Security) == 0
			if p, ok := public[key]; ok && p != open {
				t.Errorf("%s: public on the server %v, in docs/openapi.yaml %v", key, p, open)
			}
		}
	}
	slices.Sort(served)
	slices.Sort(documented)
	for _, k := range served {
		if !slices.Contains(documented, k) {
			t.Errorf("the server serves %s; docs/openapi.yaml does not describe it", k)
		}
	}
	for _, k := range documented {
		if !slices.Contains(served, k) {
			t.Errorf("docs/openapi.yaml describes %s; the server does not serve it", k)
		}
	}
	if !strings.Contains(strings.Join(served, ","), "GET /healthz") {
		t.Error("no health check")
	}
}

// Package promtest reads Prometheus metrics in tests, as a scrape would:
// the text format, parsed by Prometheus' own parser.
package promtest

import (
	"fmt"
	"io"
	"net/http"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Scrape is one scrape's metric families, by name.
type Scrape map[string]*dto.MetricFamily

// Get scrapes url.
func Get(url string) (Scrape, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	return Parse(resp.Body)
}

// Parse reads the text format.
func Parse(r io.Reader) (Scrape, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(r)
}

// Value is the value of the gauge or counter name whose labels include
// every "label=value" given, and whether there is one.
func (s Scrape) Value(name string, labels ...string) (float64, bool) {
	for _, m := range s.metrics(name, labels) {
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		}
	}
	return 0, false
}

// Count is the number of observations of histogram name with labels.
func (s Scrape) Count(name string, labels ...string) (uint64, bool) {
	for _, m := range s.metrics(name, labels) {
		if m.Histogram != nil {
			return m.Histogram.GetSampleCount(), true
		}
	}
	return 0, false
}

func (s Scrape) metrics(name string, labels []string) []*dto.Metric {
	f := s[name]
	if f == nil {
		return nil
	}
	var out []*dto.Metric
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		ok := true
		for _, kv := range labels {
			k, v, _ := strings.Cut(kv, "=")
			ok = ok && have[k] == v
		}
		if ok {
			out = append(out, m)
		}
	}
	return out
}

package imagebuild

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"undervdi/internal/debpkg"
	"undervdi/internal/testbed"
	"undervdi/internal/testlog"
)

// testEpoch is the SOURCE_DATE_EPOCH of the tests' builds.
var testEpoch = time.Date(2024, 5, 17, 12, 30, 0, 0, time.UTC)

// One package cache for all tests, shared with the CLI's default cache.
var (
	testCache     = &debpkg.Cache{Dir: filepath.Join(testbed.CacheDir(), "image-build")}
	testGRUBOnce  sync.Once
	testGRUBError error
)

// testBuilder returns a builder on the shared cache. It skips the test when
// apt knows no GRUB packages (no `apt-get update` done); any other failure
// to fetch them fails it.
func testBuilder(t *testing.T) *Builder {
	t.Helper()
	b := &Builder{Cache: testCache, Epoch: testEpoch, Log: testLogger()}
	testGRUBOnce.Do(func() {
		_, testGRUBError = b.buildGRUB(context.Background(), "1A2B-3C4D")
	})
	if errors.Is(testGRUBError, debpkg.ErrNoPackage) {
		t.Skipf("Debian's GRUB packages are not available: %v", testGRUBError)
	}
	if testGRUBError != nil {
		t.Fatalf("building GRUB: %v", testGRUBError)
	}
	return b
}

func testLogger() *slog.Logger { return testlog.Logger() }

func testCacheAt(dir string) *debpkg.Cache { return &debpkg.Cache{Dir: dir} }

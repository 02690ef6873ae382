//go:build integration

package kioskd_test

// The web console in a real browser. It lives with kioskd's tests because
// it needs their kiosk: an ad uploaded in the console must show on a real
// kiosk's slideshow under Xvfb.

import (
	"context"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"undervdi/internal/brokertest"
	"undervdi/internal/freeport"
	"undervdi/internal/poll"
	"undervdi/internal/testbed"
	"undervdi/kioskd"
	"undervdi/kioskd/config"
	"undervdi/server/api"
	bconfig "undervdi/server/config"
)

// adColor is the uploaded ad's: the kiosk shows it when its screen's
// centre has it.
var adColor = color.RGBA{0x20, 0xc0, 0x40, 0xff}

// TestConsole drives the console in Debian's Chromium, headless: no page
// without a login; a viewer sees no actions and the API refuses the one it
// tries; an operator sees the pool change live (no reload), ends a
// visitor's session, and uploads an ad that a kiosk then shows. The pages
// fit a phone's screen.
func TestConsole(t *testing.T) {
	chromium, err := findChromium()
	if err != nil {
		t.Fatal(err)
	}
	bed := testbed.New(t)
	kioskPort, adsPort, apiPort := freeport.Port(t), freeport.Port(t), freeport.Port(t)
	r := startKiosk(t, bed, kioskPort, func(c *config.Config) {
		c.AdsURL = fmt.Sprintf("http://127.0.0.1:%d/ads/", adsPort)
		c.AdsEvery = time.Hour // only the console's refresh makes it mirror again
		c.SlideInterval = time.Second
	})
	accounts := filepath.Join(bed.Root, "accounts.json")
	var acc api.Accounts
	acc.SetPassword("olga", api.Operator, "olga's long password")
	acc.SetPassword("vera", api.Viewer, "vera's long password")
	if err := acc.Write(accounts); err != nil {
		t.Fatal(err)
	}
	r.broker = brokertest.Start(t, bed, 1, func(c *bconfig.Config) {
		c.Sessions.Listen = fmt.Sprintf("0.0.0.0:%d", kioskPort)
		c.Ads.Listen = fmt.Sprintf("127.0.0.1:%d", adsPort)
		c.API.Listen = fmt.Sprintf("127.0.0.1:%d", apiPort)
		c.API.Accounts = accounts
	})
	r.waitState(kioskd.Idle, time.Minute)
	base := fmt.Sprintf("https://localhost:%d", apiPort)

	// The site CA signs the console's certificate; a browser on an
	// operator's machine trusts it once. This headless one is told to.
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium),
		chromedp.Flag("ignore-certificate-errors", true), chromedp.NoSandbox, chromedp.WindowSize(1280, 900))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	run := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			browserFail(t, ctx, what, err)
		}
	}
	logIn := func(user, password string) {
		t.Helper()
		run("log in as "+user,
			chromedp.Navigate(base+"/console/"),
			chromedp.WaitVisible(chromedp.CSS("#login")),
			chromedp.SendKeys(chromedp.CSS(`#login input[name="user"]`), user),
			chromedp.SendKeys(chromedp.CSS(`#login input[name="password"]`), password),
			chromedp.Click(chromedp.CSS("#login button")),
			chromedp.WaitVisible(chromedp.CSS("#clean")))
	}

	// No page without a login: each one lands on the login form.
	for _, page := range []string{"", "vms", "sessions", "kiosks", "versions", "audit", "ads", "schedule"} {
		run("open "+page+" logged out", chromedp.Navigate(base+"/console/"+page), chromedp.WaitVisible(chromedp.CSS("#login")))
		if loc := get(t, ctx, chromedp.Location()); !strings.Contains(loc, "/console/login") {
			t.Errorf("/console/%s logged out showed %s", page, loc)
		}
	}
	if t.Failed() {
		return
	}

	// A viewer: no action on the page, and the API refuses the one the
	// page's own script tries.
	logIn("vera", "vera's long password")
	actions := get(t, ctx, chromedp.Evaluate[int](`document.querySelectorAll("main [data-act]").length`))
	refused := get(t, ctx, chromedp.Evaluate[string](`fetch("/v1/pool/size", {method: "PUT", headers: {"Content-Type": "application/json",
			"X-CSRF-Token": document.querySelector('meta[name="csrf"]').content}, body: '{"size":3}'})
			.then(r => r.json()).then(j => j.code + ": " + j.message)`, chromedp.EvalAwaitPromise))
	if actions != 0 {
		t.Errorf("a viewer's overview shows %d actions", actions)
	}
	if !strings.HasPrefix(refused, "forbidden: vera is a viewer") {
		t.Errorf("a viewer's resize from the page: %q", refused)
	}
	if n := r.broker.Pool.Status().Size; n != 1 {
		t.Errorf("the pool's size is %d after a viewer's try", n)
	}
	run("log out", chromedp.Click(chromedp.CSS(`button[data-act="POST /v1/logout"]`)), chromedp.WaitVisible(chromedp.CSS("#login")))

	// An operator sees the pool change live: a resize from elsewhere (the
	// API's admin socket, as vdi-broker resize does) shows without a reload.
	logIn("olga", "olga's long password")
	get(t, ctx, chromedp.Evaluate[bool](`window.notReloaded = true`))
	if err := api.NewClient(r.broker.Config.AdminSocket).SetSize(context.Background(), 2); err != nil {
		t.Fatal(err)
	}
	get(t, ctx, chromedp.Poll[bool](`document.getElementById("size").textContent === "2"`, chromedp.WithPollingTimeout(time.Minute)))
	if !get(t, ctx, chromedp.Evaluate[bool](`window.notReloaded === true`)) {
		t.Error("the page reloaded instead of updating")
	}
	r.broker.WaitFull()
	get(t, ctx, chromedp.Poll[bool](`document.getElementById("clean").textContent === "2"`, chromedp.WithPollingTimeout(3*time.Minute)))

	// A visitor's session, ended from the sessions page.
	vm := r.session("console")
	run("end the session",
		chromedp.Navigate(base+"/console/sessions"),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-lease] button[data-act]`)),
		chromedp.Click(chromedp.CSS(`tr[data-lease] button[data-act]`)))
	r.loggedOut(vm)
	get(t, ctx, chromedp.Poll[bool](`document.querySelectorAll("tr[data-lease]").length === 0`, chromedp.WithPollingTimeout(time.Minute)))
	run("the audit page", chromedp.Navigate(base+"/console/audit?event=admin"), chromedp.WaitVisible(chromedp.CSS("#audit")))
	if audit := get(t, ctx, chromedp.Text(chromedp.CSS("#audit"))); !strings.Contains(audit, "olga") || !strings.Contains(audit, vm) {
		t.Errorf("the audit page does not show olga ending %s:\n%s", vm, audit)
	}

	// An ad uploaded in the console shows on the kiosk.
	r.slideshowShown()
	ad := filepath.Join(t.TempDir(), "green.png")
	writePNG(t, ad, adColor)
	run("upload an ad",
		chromedp.Navigate(base+"/console/ads"),
		chromedp.WaitVisible(chromedp.CSS(`form[data-upload]`)),
		chromedp.SetUploadFiles(chromedp.CSS(`form[data-upload] input[type="file"]`), []string{ad}),
		chromedp.Click(chromedp.CSS(`form[data-upload] button`)),
		chromedp.WaitVisible(chromedp.CSS(`figure[data-ad="green.png"] img`)))
	poll.Until(t, time.Minute, "the ad on the kiosk's screen", func() bool {
		img, err := r.x.Screenshot()
		if err != nil {
			return false
		}
		c := img.RGBAAt(400, 300)
		return c == adColor
	})

	// On a phone's screen the pages fit its width.
	for _, page := range []string{"", "kiosks", "ads"} {
		run("a phone's "+page, chromedp.EmulateViewport(390, 844), chromedp.Navigate(base+"/console/"+page),
			chromedp.WaitVisible(chromedp.CSS("main h1")))
		if !get(t, ctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth <= window.innerWidth + 1`)) {
			t.Errorf("/console/%s is wider than a phone's screen", page)
		}
	}
}

// get runs one browser action and returns its result.
func get[T any](t *testing.T, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		browserFail(t, ctx, "a browser step", err)
	}
	return v
}

// browserFail says where the browser was and what it showed.
func browserFail(t *testing.T, ctx context.Context, what string, err error) {
	t.Helper()
	loc, _ := chromedp.Run(ctx, chromedp.Location())
	html, _ := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("body")))
	t.Fatalf("%s: %v\nat %s:\n%.3000s", what, err, loc, html)
}

// findChromium is Debian's chromium (the chromium package).
func findChromium() (string, error) {
	for _, p := range []string{"/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no Chromium: apt-get install chromium (make deps does)")
}

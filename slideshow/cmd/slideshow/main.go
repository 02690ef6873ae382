// Command slideshow shows the images of a folder full screen on an X
// display, as a kiosk does while idle; kioskd runs the same code.
//
//	slideshow [-display :0] [-interval 5s] [-text "Touch to start"] DIR [FALLBACK-DIR...]
//
// It prints "touch" for each key or button press, for scripts.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"undervdi/slideshow"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "slideshow:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("slideshow", flag.ContinueOnError)
	fs.SetOutput(stderr)
	display := fs.String("display", os.Getenv("DISPLAY"), "X display")
	interval := fs.Duration("interval", 5*time.Second, "time per image")
	text := fs.String("text", "", "status line at the bottom")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return fmt.Errorf("usage: slideshow [-display :0] [-interval 5s] [-text TEXT] DIR [FALLBACK-DIR...]")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	show, err := slideshow.Open(*display, slideshow.Config{Dirs: fs.Args(), Interval: *interval,
		Log: slog.New(slog.NewTextHandler(stderr, nil))})
	if err != nil {
		return err
	}
	defer show.Close()
	show.SetText(*text)
	show.SetVisible(true)
	go func() {
		for range show.Touches() {
			fmt.Fprintln(stdout, "touch")
		}
	}()
	if err := show.Run(ctx); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

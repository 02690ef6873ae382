package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"undervdi/server/api"
)

const kioskUsage = `usage:
  vdi-broker kiosk reboot ID                  reboot a kiosk once no visitor is at it
  vdi-broker kiosk message [-seconds 60] ID TEXT...
  vdi-broker kiosk out-of-order ID [REASON...]
  vdi-broker kiosk in-order ID
  vdi-broker kiosk screenshot [-o FILE] ID    the slideshow's picture (refused during a session)
  vdi-broker kiosk refresh-ads                every kiosk mirrors the ads now
  (each takes -config, -socket, or -url and -ca with $UNDERVDI_TOKEN)
`

// kiosk sends an operator's command to a kiosk.
func kiosk(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, kioskUsage)
		return exitSetup
	}
	sub, args := args[0], args[1:]
	var seconds *int
	var out *string
	c, fs, code := adminCommand("kiosk "+sub, args, stderr, func(fs *flag.FlagSet) {
		switch sub {
		case "message":
			seconds = fs.Int("seconds", 60, "how long the message shows")
		case "screenshot":
			out = fs.String("o", "", "write the JPEG here (default: ID.jpg)")
		}
	})
	if c == nil {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id, rest := fs.Arg(0), fs.Args()
	if len(rest) > 0 {
		rest = rest[1:]
	}
	path := "/v1/kiosks/" + url.PathEscape(id)
	var err error
	switch {
	case sub == "reboot" && fs.NArg() == 1:
		if err = c.Call(ctx, "POST", path+"/reboot", nil, nil); err == nil {
			fmt.Fprintf(stdout, "%s reboots once no visitor is at it\n", id)
		}
	case sub == "message" && fs.NArg() >= 2:
		text := strings.Join(rest, " ")
		if err = c.Call(ctx, "POST", path+"/message", api.MessageRequest{Text: text, Seconds: *seconds}, nil); err == nil {
			fmt.Fprintf(stdout, "%s shows %q for %ds\n", id, text, *seconds)
		}
	case sub == "out-of-order" && fs.NArg() >= 1:
		if err = c.Call(ctx, "PUT", path+"/out-of-order", api.OutOfOrderRequest{Reason: strings.Join(rest, " ")}, nil); err == nil {
			fmt.Fprintf(stdout, "%s is out of order until vdi-broker kiosk in-order %s\n", id, id)
		}
	case sub == "in-order" && fs.NArg() == 1:
		if err = c.Call(ctx, "DELETE", path+"/out-of-order", nil, nil); err == nil {
			fmt.Fprintf(stdout, "%s is in order\n", id)
		}
	case sub == "screenshot" && fs.NArg() == 1:
		var pic []byte
		if pic, err = c.Get(ctx, path+"/screenshot"); err == nil {
			file := *out
			if file == "" {
				file = id + ".jpg"
			}
			if err = os.WriteFile(file, pic, 0o600); err == nil {
				fmt.Fprintf(stdout, "%s: %d bytes\n", file, len(pic))
			}
		}
	case sub == "refresh-ads" && fs.NArg() == 0:
		var sent api.Sent
		if err = c.Call(ctx, "POST", "/v1/ads/refresh", nil, &sent); err == nil {
			fmt.Fprintf(stdout, "%d kiosks mirror the ads now\n", sent.Kiosks)
		}
	default:
		fmt.Fprint(stderr, kioskUsage)
		return exitSetup
	}
	if err != nil {
		fmt.Fprintf(stderr, "vdi-broker: %v\n", err)
		return exitError
	}
	return exitOK
}

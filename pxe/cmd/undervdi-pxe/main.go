// Command undervdi-pxe boots kiosks from the network: it runs dnsmasq for
// DHCP (or proxy-DHCP) and TFTP, and serves the boot directory over HTTP,
// until SIGINT or SIGTERM. With -print-config it only prints dnsmasq's
// configuration.
//
//	undervdi-pxe -interface br-kiosk -boot-dir /srv/undervdi/boot \
//	    -settings undervdi.server=169.254.24.1 \
//	    -kiosk 52:54:00:12:34:56,169.254.24.11=undervdi.kiosk=lobby-1
//
// A token sent this way (undervdi.token=...) is readable by anyone on the
// kiosk LAN: such a kiosk must have a fixed address, reserved for its MAC,
// and the broker's [[kiosk]] entry must name that address.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"undervdi/internal/bootlayout"
	"undervdi/internal/debpkg"
	"undervdi/kickstart"
	"undervdi/pxe"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		log.Fatal(err)
	}
}

// options are the parsed command line.
type options struct {
	cfg            pxe.Config
	httpAddr       string
	printConfig    bool
	installLoaders bool
	cacheDir       string
	verbose        bool
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil // the usage is printed
	}
	if err != nil {
		return err
	}
	if o.printConfig {
		if o.cfg.HTTPPort == 0 {
			return errors.New("-http: port 0 is known only once listening; give a port to print the configuration")
		}
		conf, err := o.cfg.Dnsmasq()
		if err != nil {
			return err
		}
		_, err = io.WriteString(stdout, conf)
		return err
	}

	level := slog.LevelInfo
	if o.verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	// Check the configuration before the slow part.
	if err := o.cfg.Validate(); err != nil {
		return err
	}
	if o.installLoaders {
		cache := &debpkg.Cache{Dir: o.cacheDir, Log: logger}
		p, err := pxe.InstallLoaders(ctx, cache, o.cfg.BootDir)
		if err != nil {
			return fmt.Errorf("installing the iPXE loaders: %w", err)
		}
		logger.Info("installed the iPXE loaders", "package", p.String(), "dir", o.cfg.BootDir)
	}
	kiosks := o.cfg.Install == nil || len(o.cfg.Install.MACs) > 0
	if err := pxe.CheckBootDir(o.cfg.BootDir, kiosks); err != nil {
		return err
	}
	if in := o.cfg.Install; in != nil {
		// The kickstart is checked before any server boots with it.
		ks, err := os.ReadFile(filepath.Join(in.Dir, pxe.InstallKickstart))
		if err != nil {
			return err
		}
		if err := kickstart.Check(ks); err != nil {
			return fmt.Errorf("-install: %s does not pass undervdi-kickstart check:\n%w", filepath.Join(in.Dir, pxe.InstallKickstart), err)
		}
	}
	ln, err := net.Listen("tcp", o.httpAddr)
	if err != nil {
		return fmt.Errorf("-http: %w", err)
	}
	return pxe.Run(ctx, o.cfg, ln, logger)
}

func parse(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("undervdi-pxe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: undervdi-pxe -interface IFACE -boot-dir DIR [flags]\n\n"+
			"Boots kiosks from the network: dnsmasq (DHCP and TFTP) and an HTTP server for DIR,\n"+
			"which holds %s, %s, %s, %s and %s.\n\nFlags:\n",
			bootlayout.Kernel, bootlayout.Initramfs, bootlayout.IPXEScript, pxe.UndiLoader, pxe.EFILoader)
		fs.PrintDefaults()
	}
	mode := fs.String("mode", string(pxe.Isolated), "isolated: hand out the kiosk network's addresses; proxy: beside the site's DHCP server, send boot information only")
	fs.StringVar(&o.cfg.Interface, "interface", "", "the kiosk network's interface (required)")
	server := fs.String("server", "", "this host's address on the kiosk network (isolated: default the subnet's first address; proxy: required)")
	subnet := fs.String("subnet", "", "the kiosk network (isolated: default "+pxe.DefaultSubnet.String()+"; proxy: the site's subnet, required)")
	rng := fs.String("range", "", "`START-END` of kiosk addresses (isolated; default the upper half of the subnet)")
	fs.DurationVar(&o.cfg.LeaseTime, "lease-time", 0, "how long kiosks keep an address (isolated; default "+pxe.DefaultLeaseTime.String()+")")
	fs.StringVar(&o.cfg.LeaseFile, "lease-file", "", "dnsmasq's lease file (default: a temporary file)")
	fs.StringVar(&o.httpAddr, "http", ":"+strconv.Itoa(pxe.DefaultHTTPPort), "listen address of the HTTP server for the boot directory; iPXE is sent to the server address at this port")
	fs.StringVar(&o.cfg.BootDir, "boot-dir", "", "the network-boot directory (required)")
	fs.BoolVar(&o.installLoaders, "install-loaders", false, "first copy Debian's iPXE loaders ("+pxe.UndiLoader+", "+pxe.EFILoader+") into the boot directory")
	fs.StringVar(&o.cacheDir, "cache", "/var/cache/undervdi/debs", "download cache for -install-loaders")
	fs.StringVar(&o.cfg.Settings, "settings", "", fmt.Sprintf("settings for every kiosk, sent as DHCP option %d (isolated)", bootlayout.DHCPOption))
	fs.Func("kiosk", "`MAC[,ADDRESS]=SETTINGS` for one kiosk, after the site-wide ones, with its fixed address (required when the settings carry a token); repeatable (isolated)", func(s string) error {
		who, text, ok := strings.Cut(s, "=")
		if !ok {
			return errors.New("want MAC[,ADDRESS]=SETTINGS")
		}
		mac, addr, withAddr := strings.Cut(who, ",")
		hw, err := net.ParseMAC(mac)
		if err != nil {
			return err
		}
		k := pxe.Kiosk{MAC: hw, Settings: text}
		if withAddr {
			if k.Addr, err = netip.ParseAddr(addr); err != nil {
				return fmt.Errorf("kiosk %s: %w", mac, err)
			}
		}
		o.cfg.Kiosks = append(o.cfg.Kiosks, k)
		return nil
	})
	install := fs.String("install", "", "also serve a server install from `DIR`: the EL9 installer's vmlinuz and initrd.img, the ks.cfg undervdi-kickstart wrote, and undervdi/ (what its %post fetches)")
	repo := fs.String("install-repo", "", "inst.repo for the installer, where the kickstart names no url")
	installCmdline := fs.String("install-cmdline", "", "more for the installer's kernel command line, such as console=ttyS0")
	var installMACs []net.HardwareAddr
	fs.Func("install-mac", "`MAC` of a machine that boots the installer (repeatable); none: every client does", func(s string) error {
		hw, err := net.ParseMAC(s)
		if err == nil {
			installMACs = append(installMACs, hw)
		}
		return err
	})
	fs.BoolVar(&o.cfg.LogDHCP, "log-dhcp", false, "have dnsmasq log every DHCP exchange in detail")
	fs.BoolVar(&o.printConfig, "print-config", false, "only print the dnsmasq configuration")
	fs.BoolVar(&o.verbose, "v", false, "log more, including every HTTP request")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}

	o.cfg.Mode = pxe.Mode(*mode)
	var err error
	if *server != "" {
		if o.cfg.Server, err = netip.ParseAddr(*server); err != nil {
			return nil, fmt.Errorf("-server: %w", err)
		}
	}
	if *subnet != "" {
		if o.cfg.Subnet, err = netip.ParsePrefix(*subnet); err != nil {
			return nil, fmt.Errorf("-subnet: %w", err)
		}
	}
	if *rng != "" {
		start, end, ok := strings.Cut(*rng, "-")
		if !ok {
			return nil, fmt.Errorf("-range %q: want START-END", *rng)
		}
		if o.cfg.RangeStart, err = netip.ParseAddr(start); err != nil {
			return nil, fmt.Errorf("-range: %w", err)
		}
		if o.cfg.RangeEnd, err = netip.ParseAddr(end); err != nil {
			return nil, fmt.Errorf("-range: %w", err)
		}
	}
	if o.cfg.LeaseTime < 0 {
		return nil, fmt.Errorf("-lease-time %s is negative", o.cfg.LeaseTime)
	}
	_, port, err := net.SplitHostPort(o.httpAddr)
	if err != nil {
		return nil, fmt.Errorf("-http: %w", err)
	}
	if o.cfg.HTTPPort, err = strconv.Atoi(port); err != nil {
		return nil, fmt.Errorf("-http: port %q is not a number", port)
	}
	if o.cfg.BootDir != "" {
		if o.cfg.BootDir, err = filepath.Abs(o.cfg.BootDir); err != nil {
			return nil, err
		}
	}
	if *install != "" {
		dir, err := filepath.Abs(*install)
		if err != nil {
			return nil, err
		}
		o.cfg.Install = &pxe.ServerInstall{Dir: dir, Repo: *repo, MACs: installMACs, Cmdline: *installCmdline}
	} else if *repo != "" || len(installMACs) > 0 || *installCmdline != "" {
		return nil, errors.New("-install-repo, -install-mac and -install-cmdline go with -install")
	}
	return o, nil
}

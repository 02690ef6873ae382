package kickstart

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"text/template"

	"github.com/BurntSushi/toml"

	"undervdi/pxe"
	"undervdi/server"
)

// VolumeGroup is the LVM volume group the server's disk holds.
const VolumeGroup = "vg_undervdi"

// Generate writes the kickstart file for s (validated by Parse).
func Generate(s *Site, name string) ([]byte, error) {
	var broker bytes.Buffer
	if err := toml.NewEncoder(&broker).Encode(s.Broker); err != nil {
		return nil, err
	}
	kiosk, _ := netip.ParsePrefix(s.Kiosks.Address)
	d := struct {
		*Site
		Name, BrokerTOML, BrokerUnit, PXEUnit string
		UplinkLine, KioskLine, AdminLine      string
		KioskIface                            string
		KioskPorts                            []string
		GuestPorts                            []string // the broker's on the guest network's gateway
		APIPort                               string
		FirewallUplink                        string
		SudoNoPassword                        bool
		PXESettings                           string
		UndervdiSize                          string
		MiB                                   func(uint64) int
	}{
		Site: s, Name: name, BrokerTOML: strings.TrimSpace(broker.String()),
		BrokerUnit: strings.TrimSpace(server.Unit), PXEUnit: strings.TrimSpace(pxe.Unit),
		KioskIface: cmpOr(s.Kiosks.Bridge, s.Kiosks.Device), SudoNoPassword: s.Admin.PasswordHash == "",
		PXESettings: "undervdi.server=" + kiosk.Addr().String(),
		MiB:         func(b uint64) int { return int(b >> 20) },
	}
	d.UplinkLine = networkLine(s.Uplink, "", true, s.Hostname)
	d.KioskLine = networkLine(Iface{Device: s.Kiosks.Device, Address: s.Kiosks.Address}, s.Kiosks.Bridge, false, "")
	if s.AdminNet != nil {
		d.AdminLine = networkLine(*s.AdminNet, "", false, "")
	}
	b := s.Broker
	for _, l := range []string{b.Sessions.LegacyListen, b.Gateway.Listen, b.Sessions.Listen, b.Ads.Listen, b.Gateway.TLSListen} {
		if l != "" {
			d.KioskPorts = append(d.KioskPorts, port(l)+"/tcp")
		}
	}
	if s.Kiosks.PXE {
		d.KioskPorts = append(d.KioskPorts, strconv.Itoa(pxe.DefaultHTTPPort)+"/tcp")
	}
	slices.Sort(d.KioskPorts)
	d.KioskPorts = slices.Compact(d.KioskPorts)
	if b.API.Listen != "" {
		d.APIPort = port(b.API.Listen)
	}
	if b.Network.Isolated() {
		d.GuestPorts = []string{"80/tcp", "443/tcp", strconv.Itoa(b.Network.ProxyPort) + "/tcp"}
	}
	// The uplink's zone is the default one: SSH and the console there,
	// unless a separate admin network takes them.
	if s.AdminNet == nil {
		d.FirewallUplink = "firewall --enabled --service=ssh"
		if d.APIPort != "" {
			d.FirewallUplink += " --port=" + d.APIPort + ":tcp"
		}
	} else {
		d.FirewallUplink = "firewall --enabled --remove-service=ssh --remove-service=cockpit --remove-service=dhcpv6-client"
	}
	d.UndervdiSize = "--size=20480 --grow"
	if s.Disk.Undervdi != 0 {
		d.UndervdiSize = "--size=" + strconv.Itoa(int(uint64(s.Disk.Undervdi)>>20))
	}
	var out bytes.Buffer
	if err := ksTemplate.Execute(&out, d); err != nil {
		return nil, err
	}
	// A value that carries a character kickstart breaks lines on would
	// start a line of its own there: a command, or a section.
	if i := bytes.IndexFunc(out.Bytes(), func(r rune) bool { return r != '\n' && isLineBreak(r) }); i >= 0 {
		return nil, fmt.Errorf("a value of the site file holds a line break kickstart splits on (%q), near %q", out.Bytes()[i:i+1],
			clipText(out.String()[max(0, i-40):i]))
	}
	return out.Bytes(), nil
}

func clipText(s string) string {
	if j := strings.LastIndexByte(s, '\n'); j >= 0 {
		return s[j+1:]
	}
	return s
}

// networkLine is the network command for one interface.
func networkLine(i Iface, bridge string, uplink bool, hostname string) string {
	dev := i.Device
	var opts []string
	if bridge != "" {
		dev = bridge
		opts = append(opts, "--bridgeslaves="+i.Device)
	}
	opts = append([]string{"--device=" + dev}, opts...)
	if i.Address == "dhcp" {
		opts = append(opts, "--bootproto=dhcp")
	} else {
		p, _ := netip.ParsePrefix(i.Address)
		mask := net.CIDRMask(p.Bits(), 32)
		opts = append(opts, "--bootproto=static", "--ip="+p.Addr().String(), "--netmask="+net.IP(mask).String())
		if i.Gateway != "" {
			opts = append(opts, "--gateway="+i.Gateway)
		}
		if len(i.Nameservers) > 0 {
			opts = append(opts, "--nameserver="+strings.Join(i.Nameservers, ","))
		}
	}
	if uplink {
		opts = append(opts, "--activate", "--hostname="+hostname)
	} else {
		opts = append(opts, "--nodefroute")
	}
	opts = append(opts, "--onboot=yes", "--noipv6")
	return "network " + strings.Join(opts, " ")
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

var ksTemplate = template.Must(template.New("ks").Parse(`# {{.Name}}: the undervdi KVM server {{.Hostname}}, installed unattended.
# Written by undervdi-kickstart from the site file; change the site file
# and write it again rather than editing this one.
# EL9: AlmaLinux, Rocky Linux or RHEL 9. The whole of disk {{.Disk.Device}} is erased.

text
{{if eq .Source "cdrom"}}cdrom{{else}}url --url={{.Source}}{{end}}
eula --agreed
lang {{.Lang}}
keyboard --vckeymap={{.Keyboard}} --xlayouts={{.Keyboard}}
timezone {{.TimeZone}} --utc
{{- range .NTP}}
timesource --ntp-server={{.}}
{{- end}}
firstboot --disable
skipx
reboot

# Network: the uplink, the kiosks' side{{if .AdminNet}}, the operators' network{{end}}.
{{.UplinkLine}}
{{.KioskLine}}
{{- if .AdminLine}}
{{.AdminLine}}
{{- end}}

# Security: root locked, SELinux enforcing, the firewall on.
rootpw --lock
user --name={{.Admin.User}} --groups=wheel --gecos="undervdi operator"{{if .Admin.PasswordHash}} --iscrypted --password={{.Admin.PasswordHash}}{{else}} --lock{{end}}
{{- range .Admin.SSHKeys}}
sshkey --username={{$.Admin.User}} "{{.}}"
{{- end}}
selinux --enforcing
{{.FirewallUplink}}
services --enabled=chronyd,sshd,firewalld,virtqemud,virtstoraged,virtnetworkd,virtnwfilterd,virtsecretd

# Disk: LVM, with a volume of its own for golden versions and overlays.
ignoredisk --only-use={{.Disk.Device}}
zerombr
clearpart --all --initlabel --drives={{.Disk.Device}}
bootloader --boot-drive={{.Disk.Device}} --timeout=3
reqpart --add-boot
part pv.01 --fstype=lvmpv --ondisk={{.Disk.Device}} --size=1 --grow
volgroup ` + VolumeGroup + ` pv.01
logvol / --vgname=` + VolumeGroup + ` --name=root --fstype=xfs --size={{call .MiB .Disk.Root}}
{{- if .Disk.Swap}}
logvol swap --vgname=` + VolumeGroup + ` --name=swap --fstype=swap --size={{call .MiB .Disk.Swap}}
{{- end}}
{{- /* No swap by default: what is swapped out is visitors' VMs' memory. */}}
logvol /var/lib/undervdi --vgname=` + VolumeGroup + ` --name=undervdi --fstype=xfs {{.UndervdiSize}}

%packages
@^minimal-environment
qemu-kvm
libvirt-daemon-kvm
libvirt-client
virt-install
policycoreutils-python-utils
firewalld
chrony
curl
{{- if .Kiosks.PXE}}
dnsmasq
{{- end}}
%end

# What no kickstart command installs: undervdi's binaries (checked against
# their SHA-256), the broker's configuration, the units; the files' SELinux
# labels; the kiosk-facing firewall zone.
%post --log=/root/undervdi-install.log --erroronfail
set -euo pipefail
base='{{.Install.URL}}'
fetch() { curl -fsS --retry 5 --retry-delay 3 -o "$2" "$base$1"; }
fetch vdi-broker /usr/local/bin/vdi-broker
echo '{{.Install.BrokerSHA256}}  /usr/local/bin/vdi-broker' | sha256sum -c -
chmod 0755 /usr/local/bin/vdi-broker
useradd --system --no-create-home --shell /sbin/nologin --groups libvirt vdi-broker
install -d -m 0750 -g vdi-broker /etc/undervdi
cat > /etc/undervdi/vdi-broker.toml <<'UNDERVDI_END'
{{.BrokerTOML}}
UNDERVDI_END
chgrp vdi-broker /etc/undervdi/vdi-broker.toml
chmod 0640 /etc/undervdi/vdi-broker.toml
cat > /etc/systemd/system/vdi-broker.service <<'UNDERVDI_END'
{{.BrokerUnit}}
UNDERVDI_END
{{- if .SudoNoPassword}}
echo '{{.Admin.User}} ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/undervdi-operator
chmod 0440 /etc/sudoers.d/undervdi-operator
{{- end}}
{{- if .Kiosks.PXE}}
fetch undervdi-pxe /usr/local/bin/undervdi-pxe
echo '{{.Install.PXESHA256}}  /usr/local/bin/undervdi-pxe' | sha256sum -c -
chmod 0755 /usr/local/bin/undervdi-pxe
install -d -m 0755 /var/lib/undervdi/pxe
for f in vmlinuz initramfs.img boot.ipxe undionly.kpxe ipxe.efi; do fetch "pxe/$f" "/var/lib/undervdi/pxe/$f"; done
printf 'INTERFACE=%s\nSETTINGS=%s\n' '{{.KioskIface}}' '{{.PXESettings}}' > /etc/undervdi/pxe.env
cat > /etc/systemd/system/undervdi-pxe.service <<'UNDERVDI_END'
{{.PXEUnit}}
UNDERVDI_END
{{- end}}
# Nothing of a visitor's VM's memory on disk: no core dumps (the broker's
# unit sets LimitCORE=0 too, and each clone's memory is marked dumpCore=off),
{{- if .Disk.Swap}}
# and swap encrypted with a key made anew at every boot (dm-crypt, plain,
# from /dev/urandom): nothing swapped out survives a restart.
echo 'swap /dev/mapper/` + VolumeGroup + `-swap /dev/urandom swap,cipher=aes-xts-plain64,size=512' >> /etc/crypttab
sed -i -E 's|^[^#[:space:]]+([[:space:]]+none[[:space:]]+swap[[:space:]])|/dev/mapper/swap\1|' /etc/fstab
{{- else}}
# and no swap.
{{- end}}
install -d -m 0755 /etc/systemd/coredump.conf.d
printf '[Coredump]\nStorage=none\nProcessSizeMax=0\n' > /etc/systemd/coredump.conf.d/undervdi.conf
echo 'fs.suid_dumpable = 0' > /etc/sysctl.d/50-undervdi.conf
printf '\n# undervdi: no QEMU core dumps, never guest memory in one\nmax_core = 0\ndump_guest_core = 0\n' >> /etc/libvirt/qemu.conf
# QEMU's logs in memory: a clone's log holds its command line, with its disk
# key's passphrase encrypted by a per-VM key libvirt keeps on disk while the
# VM runs. Neither survives the wipe (the key file) or a restart (the log).
echo 'tmpfs /var/log/libvirt/qemu tmpfs mode=0700,size=256m,context="system_u:object_r:virt_log_t:s0" 0 0' >> /etc/fstab
semanage fcontext -a -t virt_image_t '/var/lib/undervdi/(overlays|versions)(/.*)?'
restorecon -R /usr/local/bin /etc/undervdi /etc/systemd/system /var/lib/undervdi
firewall-offline-cmd --new-zone=undervdi-kiosks
firewall-offline-cmd --zone=undervdi-kiosks --add-interface={{.KioskIface}}
{{- range .KioskPorts}}
firewall-offline-cmd --zone=undervdi-kiosks --add-port={{.}}
{{- end}}
{{- if .Kiosks.PXE}}
firewall-offline-cmd --zone=undervdi-kiosks --add-service=dhcp --add-service=tftp
{{- end}}
{{- if .GuestPorts}}
# The visitors' VMs' network: libvirt puts its bridge in the libvirt zone;
# there the broker's DNS, proxies and DHCP only (the broker's network
# filters allow nothing else either).
firewall-offline-cmd --zone=libvirt --remove-service=ssh
{{- range .GuestPorts}}
firewall-offline-cmd --zone=libvirt --add-port={{.}}
{{- end}}
{{- end}}
{{- if .AdminNet}}
firewall-offline-cmd --new-zone=undervdi-admin
firewall-offline-cmd --zone=undervdi-admin --add-interface={{.AdminNet.Device}}
firewall-offline-cmd --zone=undervdi-admin --add-service=ssh{{if .APIPort}} --add-port={{.APIPort}}/tcp{{end}}
{{- end}}
systemctl enable vdi-broker.service{{if .Kiosks.PXE}} undervdi-pxe.service{{end}}
%end
`))

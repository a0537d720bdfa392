package main

import (
	"context"
	"fmt"
	"strings"
)

// stepViewerStatus runs `gatehouse status` over the HTTPS admin endpoint
// twice, with the global admin's certificate and with the certificate of
// a viewer of tenant acme, and prints both: the viewer's names its tenant
// and nothing global (no feed, no admitted ranges).
func (d *demo) stepViewerStatus(ctx context.Context) (string, error) {
	status := func(who string) (string, error) {
		p := d.path("pki")
		return d.cmd(ctx, d.role(), d.bin, "status", "--admin-url", "https://"+adminAddr,
			"--cert", p+"/"+who+".pem", "--key", p+"/"+who+".key", "--ca", p+"/gatehouse-ca/ca.pem")
	}
	admin, err := status("ops-admin")
	if err != nil {
		return "", err
	}
	viewer, err := status("acme-viewer")
	if err != nil {
		return "", err
	}
	switch {
	case !strings.Contains(admin, feedName):
		return "", fmt.Errorf("the global admin's status does not show feed %q:\n%s", feedName, admin)
	case !strings.Contains(viewer, tenant):
		return "", fmt.Errorf("the viewer's status does not show tenant %q:\n%s", tenant, viewer)
	case strings.Contains(viewer, feedName):
		return "", fmt.Errorf("the tenant viewer's status shows the global feed %q:\n%s", feedName, viewer)
	}
	return fmt.Sprintf("global admin (CN=ops-admin):\n%s\ntenant viewer (CN=acme-viewer, viewer at tenant:%s):\n%s\nthe same view in a browser: https://%s/ (the status page)",
		indent(admin), tenant, indent(viewer), adminAddr), nil
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n  ")
}

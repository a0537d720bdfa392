package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dmz/gatehouse/rules"
)

// feedInspectCmd is `gatehouse feed inspect`: what a provider's file holds,
// before anything is signed or verified.
func feedInspectCmd() *cobra.Command {
	var format string
	var values bool
	sel := feedSelectFlag{}
	c := &cobra.Command{
		Use:   "inspect [--format FMT] [--select key=v…] FILE|DIR",
		Short: "Counts per family and prefix length, coverage, and what a selection keeps",
		Long: `inspect parses a provider's file (or every file of a release directory, formats
from its manifest, which is not verified here: use verify for that) and prints
entries, unique and aggregated prefixes and covered addresses per family, the
prefix length histogram, the selection keys with their number of values
(--values lists them), and what --select keeps.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			type item struct {
				name, format string
				data         []byte
			}
			var items []item
			st, err := os.Stat(args[0])
			if err != nil {
				return err
			}
			if st.IsDir() || filepath.Base(args[0]) == rules.ManifestName {
				b, err := readBundle(args[0])
				if err != nil {
					return err
				}
				m, err := rules.ParseManifest(b.Manifest)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "manifest (NOT verified): source %s, serial %d, issued %s, expires %s, %d signature file(s)\n\n",
					m.Source, m.Serial, m.Issued.UTC().Format(time.RFC3339), m.Expires.UTC().Format(time.RFC3339), len(b.Signatures))
				for _, f := range m.Files {
					data, ok := b.Files[f.Name]
					if !ok {
						return fmt.Errorf("%s: missing", f.Name)
					}
					items = append(items, item{f.Name, f.Format, data})
				}
			} else {
				if format == "" {
					return errors.New("--format is required for a single file")
				}
				data, err := os.ReadFile(args[0])
				if err != nil {
					return err
				}
				items = append(items, item{filepath.Base(args[0]), format, data})
			}
			for _, it := range items {
				if format != "" && it.format != format {
					return fmt.Errorf("%s has format %s, not %s", it.name, it.format, format)
				}
				if err := rules.ValidateSelection(it.format, rules.Selection(sel)); err != nil {
					return err
				}
				r, err := rules.Parse(it.format, it.data)
				if err != nil {
					return fmt.Errorf("%s: %w", it.name, err)
				}
				if err := inspectRanges(cmd.OutOrStdout(), it.name, r, rules.Selection(sel), values); err != nil {
					return err
				}
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&format, "format", "", "feed format: "+strings.Join(rules.Formats, ", "))
	f.Var(sel, "select", "selection key=value[,value…], repeatable")
	f.BoolVar(&values, "values", false, "list every value of every selection key with its entry count")
	return c
}

func inspectRanges(w io.Writer, name string, r *rules.Ranges, sel rules.Selection, values bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	all := r.All()
	fmt.Fprintf(tw, "%s: format %s, %d entries\n", name, r.Format, len(all))
	if err := (rules.Guards{}).Check(all); err != nil {
		fmt.Fprintf(tw, "  guards (defaults, no exemptions): REFUSED: %v\n", err)
	} else {
		fmt.Fprintf(tw, "  guards (defaults): pass\n")
	}
	keys, _ := rules.SelectKeys(r.Format)
	attrs := r.AttrValues()
	for _, k := range keys {
		fmt.Fprintf(tw, "  select key %s\t%d values\n", k, len(attrs[k]))
		if values {
			vals := attrs[k]
			names := make([]string, 0, len(vals))
			for v := range vals {
				names = append(names, v)
			}
			slices.Sort(names)
			for _, v := range names {
				fmt.Fprintf(tw, "    %q\t%d entries\n", v, vals[v])
			}
		}
	}
	rows := []struct {
		label string
		ps    []netip.Prefix
	}{{"all", all}}
	if len(sel) > 0 {
		rows = append(rows, struct {
			label string
			ps    []netip.Prefix
		}{"selected " + feedSelectFlag(sel).String(), r.Select(sel)})
	}
	fmt.Fprintln(tw, "\tfamily\tentries\tunique\taggregated\taddresses")
	for _, row := range rows {
		agg := rules.Aggregate(row.ps)
		cov := rules.CoverageOf(agg)
		for _, fam := range []string{"ipv4", "ipv6"} {
			is4 := fam == "ipv4"
			var entries int
			uniq := map[netip.Prefix]bool{}
			for _, p := range row.ps {
				if p.Addr().Is4() == is4 {
					entries++
					uniq[p] = true
				}
			}
			n4, n6 := familyCounts(agg)
			n, addrs := n4, strconv.FormatUint(cov.V4, 10)
			if !is4 {
				n, addrs = n6, cov.V6.String()
			}
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\t%d\t%s\n", row.label, fam, entries, len(uniq), n, addrs)
		}
	}
	for _, row := range rows {
		hist := map[string]map[int]int{"ipv4": {}, "ipv6": {}}
		for _, p := range row.ps {
			fam := "ipv6"
			if p.Addr().Is4() {
				fam = "ipv4"
			}
			hist[fam][p.Bits()]++
		}
		for _, fam := range []string{"ipv4", "ipv6"} {
			if len(hist[fam]) == 0 {
				continue
			}
			var lens []int
			for l := range hist[fam] {
				lens = append(lens, l)
			}
			slices.Sort(lens)
			var b bytes.Buffer
			for _, l := range lens {
				fmt.Fprintf(&b, " /%d:%d", l, hist[fam][l])
			}
			fmt.Fprintf(tw, "  %s %s lengths\t%s\n", row.label, fam, strings.TrimSpace(b.String()))
		}
	}
	fmt.Fprintln(tw)
	return tw.Flush()
}

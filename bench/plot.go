package bench

import (
	"cmp"
	"fmt"
	"image/color"
	"path/filepath"
	"slices"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Plot files, inside the output directory: a SYN flood's report has
// PlotSynack, a forged-ACK flood's PlotBackend instead; both have
// PlotLegit and PlotCPU.
const (
	PlotSynack  = "synack.png"
	PlotBackend = "backend.png"
	PlotLegit   = "legit.png"
	PlotCPU     = "cpu.png"
	// PlotTTFB is the time to first byte, in reports with a client RTT.
	PlotTTFB = "ttfb.png"
)

// lineStyle is how one system's line looks.
type lineStyle struct {
	color  color.Color
	shape  draw.GlyphDrawer
	dashes []vg.Length
}

// systemStyle gives each system the same colour and marker in every plot.
// Dashes differ too, so that lines lying on top of each other (every
// system at 100% of legitimate clients) stay visible.
var systemStyle = map[System]lineStyle{
	Synguard:        {color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, draw.CircleGlyph{}, nil},
	SynguardNFQueue: {color.RGBA{R: 0xbc, G: 0xbd, B: 0x22, A: 0xff}, draw.BoxGlyph{}, []vg.Length{vg.Points(10), vg.Points(3)}},
	Synproxy:        {color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, draw.SquareGlyph{}, []vg.Length{vg.Points(6), vg.Points(3)}},
	None:            {color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}, draw.TriangleGlyph{}, []vg.Length{vg.Points(2), vg.Points(2)}},
}

// synguardMoreQueues styles the second, third, ... queue count of
// synguard and synguard-nfqueue in a report (each system's first looks as
// it always does): colours unlike the other systems', and a dash-dot
// line. Their lines are drawn under the
// kernel systems' and often lie on them (every system at 100% of
// legitimate clients), so the first ones get filled markers, which show
// where a thin line does not. Past the sixth count the styles repeat; the
// legend still names each.
var synguardMoreQueues = []lineStyle{
	{color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff}, draw.BoxGlyph{}, nil},
	{color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}, draw.PyramidGlyph{}, nil},
	{color.RGBA{R: 0x8c, G: 0x56, B: 0x4b, A: 0xff}, draw.RingGlyph{}, nil},
	{color.RGBA{R: 0xe3, G: 0x77, B: 0xc2, A: 0xff}, draw.CrossGlyph{}, nil},
	{color.RGBA{R: 0x17, G: 0xbe, B: 0xcf, A: 0xff}, draw.PlusGlyph{}, nil},
}

// styleOf returns a variant's style: the kernel systems' own, each
// synguard system's own for its fewest queues, and for their further
// queue counts one each from synguardMoreQueues, in report order.
func (r *Report) styleOf(v variant) lineStyle {
	if !v.sys.IsSynguard() {
		return systemStyle[v.sys]
	}
	seen := make(map[System]bool)
	more := 0 // further queue counts so far
	for _, w := range r.variants() {
		if !w.sys.IsSynguard() {
			continue
		}
		first := !seen[w.sys]
		seen[w.sys] = true
		if !first {
			more++
		}
		if w != v {
			continue
		}
		if first {
			break
		}
		st := synguardMoreQueues[(more-1)%len(synguardMoreQueues)]
		st.dashes = []vg.Length{vg.Points(8), vg.Points(2), vg.Points(2), vg.Points(2)}
		return st
	}
	return systemStyle[v.sys]
}

// legendAt places a plot's legend in a corner its lines rarely cross.
type legendAt struct{ top, left bool }

// plainTicks are the default tick positions labelled without trailing
// zeros ("50", not "50.00").
type plainTicks struct{}

func (plainTicks) Ticks(min, max float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(min, max)
	for i := range ticks {
		if ticks[i].Label != "" {
			ticks[i].Label = strconv.FormatFloat(ticks[i].Value, 'f', -1, 64)
		}
	}
	return ticks
}

// plotSpec is one plot of a report.
type plotSpec struct {
	file, title, alt, ylabel string
	y                        func(RunResult) float64
	diagonal                 bool // draw y = x: every packet offered
	ymax                     float64
	legend                   legendAt
	// noFlood, when set, gives each line a first point at no load from
	// the variant's run without a flood.
	noFlood func(NoFloodRun) float64
	// refs are horizontal reference lines.
	refs []refLine
}

// refLine is a horizontal line across a plot, named in the legend.
type refLine struct {
	y     float64
	label string
}

// plotSpecs are the report's plots, in order: SYN-ACKs answered (SYN
// flood) or forged ACKs reaching the backend (forged-ACK flood), the
// legitimate clients served, the CPU per flood packet and, with a client
// RTT, the time to first byte.
func (r *Report) plotSpecs() []plotSpec {
	first := plotSpec{PlotSynack, "SYN-ACKs answered", "SYN-ACKs answered against offered load", "SYN-ACK/s (thousands)",
		func(r RunResult) float64 { return r.SynackPPS / 1000 }, true, 0, legendAt{top: true, left: true}, nil, nil}
	cpu := plotSpec{PlotCPU, "CPU per SYN beyond the baseline", "CPU per SYN against offered load", "CPU µs per offered SYN",
		func(r RunResult) float64 { return r.CPUusPerSYN }, false, 0, legendAt{top: true, left: false}, nil, nil}
	if r.attack() == KindACK {
		first = plotSpec{PlotBackend, "Forged ACKs reaching the backend", "Forged ACKs reaching the backend against offered load",
			"reached the backend /s (thousands)",
			func(r RunResult) float64 { return r.BackendACKPPS / 1000 }, true, 0, legendAt{top: true, left: true}, nil, nil}
		cpu = plotSpec{PlotCPU, "CPU per forged ACK beyond the baseline", "CPU per forged ACK against offered load", "CPU µs per offered forged ACK",
			func(r RunResult) float64 { return r.CPUusPerACK }, false, 0, legendAt{top: true, left: false}, nil, nil}
	}
	specs := []plotSpec{first,
		{PlotLegit, "Legitimate clients served", "Legitimate clients served against offered load", "succeeded (%)",
			func(r RunResult) float64 { return 100 * r.LegitSuccess }, false, 105, legendAt{top: false, left: true}, nil, nil},
		cpu}
	if rtt := r.Config.ClientRTTms; rtt > 0 {
		specs = append(specs, plotSpec{
			file: PlotTTFB, title: fmt.Sprintf("Time to first byte, clients %s ms away", fmtFloat(rtt)),
			alt: "Time to first byte against offered load", ylabel: "first byte p50 (ms)",
			y:       func(r RunResult) float64 { return r.TTFBP50ms },
			legend:  legendAt{top: true, left: false},
			noFlood: func(n NoFloodRun) float64 { return n.TTFBP50ms },
			refs:    []refLine{{2 * rtt, "2 RTT"}, {3 * rtt, "3 RTT"}},
		})
	}
	return specs
}

// PlotFiles lists the plots the report draws.
func (r *Report) PlotFiles() []string {
	var files []string
	for _, pl := range r.plotSpecs() {
		files = append(files, pl.file)
	}
	return files
}

// WritePlots draws, against offered load, the SYN-ACK rate (or the forged
// ACKs reaching the backend), the share of legitimate clients served and
// the CPU per SYN (or forged ACK) of every system, as PNGs in dir.
func (r *Report) WritePlots(dir string) error {
	xlabel := "offered SYN/s (thousands)"
	if r.attack() == KindACK {
		xlabel = "offered forged ACK/s (thousands)"
	}
	for _, pl := range r.plotSpecs() {
		p := plot.New()
		p.Title.Text = pl.title
		p.X.Label.Text = xlabel
		p.Y.Label.Text = pl.ylabel
		p.X.Min = 0
		p.Y.Min = 0
		p.Add(plotter.NewGrid())
		p.X.Tick.Marker = plainTicks{}
		p.Y.Tick.Marker = plainTicks{}
		p.Title.TextStyle.Font.Size = vg.Points(14)
		p.Legend.Top, p.Legend.Left = pl.legend.top, pl.legend.left
		p.Legend.XOffs, p.Legend.YOffs = vg.Points(10), vg.Points(10)
		if !pl.legend.left {
			p.Legend.XOffs = -p.Legend.XOffs
		}
		if pl.legend.top {
			p.Legend.YOffs = -p.Legend.YOffs
		}

		var xmax, ymax float64
		for _, run := range r.Runs {
			xmax = max(xmax, run.OfferedPPS/1000)
			ymax = max(ymax, pl.y(run))
		}
		if pl.noFlood != nil {
			for _, n := range r.NoFlood {
				ymax = max(ymax, pl.noFlood(n))
			}
		}
		// Reference lines, like the diagonal, go under the systems'.
		var refs []*plotter.Line
		for i, ref := range pl.refs {
			l, err := plotter.NewLine(plotter.XYs{{X: 0, Y: ref.y}, {X: max(xmax, 1), Y: ref.y}})
			if err != nil {
				return fmt.Errorf("plot %s: %w", pl.file, err)
			}
			l.Color = color.Gray{Y: uint8(0x60 + 0x30*i)}
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			p.Add(l)
			refs = append(refs, l)
			ymax = max(ymax, ref.y)
		}
		// The diagonal goes under the systems' lines, and every line
		// under every marker: systems often lie on each other (no forged
		// ACK through, every legitimate client served), and a marker
		// drawn last still shows where a line is covered.
		var diagonal *plotter.Line
		if pl.diagonal && xmax > 0 {
			d, err := plotter.NewLine(plotter.XYs{{X: 0, Y: 0}, {X: xmax, Y: xmax}})
			if err != nil {
				return fmt.Errorf("plot %s: %w", pl.file, err)
			}
			d.Color = color.Gray{Y: 0x80}
			d.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			p.Add(d)
			diagonal = d
		}
		var markers []plot.Plotter
		for _, v := range r.variants() {
			var pts plotter.XYs
			for _, run := range r.Runs {
				if run.variant() == v {
					pts = append(pts, plotter.XY{X: run.OfferedPPS / 1000, Y: pl.y(run)})
				}
			}
			if pl.noFlood != nil {
				for _, n := range r.NoFlood {
					if n.variant() == v {
						pts = append(pts, plotter.XY{X: 0, Y: pl.noFlood(n)})
					}
				}
			}
			slices.SortFunc(pts, func(a, b plotter.XY) int { return cmp.Compare(a.X, b.X) })
			line, points, err := plotter.NewLinePoints(pts)
			if err != nil {
				return fmt.Errorf("plot %s: %w", pl.file, err)
			}
			st := r.styleOf(v)
			line.Color = st.color
			line.Width = vg.Points(1.5)
			line.Dashes = st.dashes
			points.Color = st.color
			points.Shape = st.shape
			points.Radius = vg.Points(3)
			p.Add(line)
			markers = append(markers, points)
			p.Legend.Add(r.label(v), line, points)
		}
		p.Add(markers...)
		if diagonal != nil {
			p.Legend.Add("offered", diagonal)
		}
		for i, l := range refs {
			p.Legend.Add(pl.refs[i].label, l)
		}
		switch {
		case pl.ymax > 0:
			p.Y.Max = pl.ymax
		case !pl.legend.left:
			// Room above the lines for a legend on the right.
			p.Y.Max = max(p.Y.Max, 1.3*ymax)
		}
		if err := p.Save(7*vg.Inch, 4.5*vg.Inch, filepath.Join(dir, pl.file)); err != nil {
			return fmt.Errorf("plot %s: %w", pl.file, err)
		}
	}
	return nil
}

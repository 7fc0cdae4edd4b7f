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

// Plot files, inside the output directory.
const (
	PlotSynack = "synack.png"
	PlotLegit  = "legit.png"
	PlotCPU    = "cpu.png"
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
	Synguard: {color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, draw.CircleGlyph{}, nil},
	Synproxy: {color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, draw.SquareGlyph{}, []vg.Length{vg.Points(6), vg.Points(3)}},
	None:     {color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}, draw.TriangleGlyph{}, []vg.Length{vg.Points(2), vg.Points(2)}},
}

// synguardMoreQueues styles synguard's second, third, ... queue count in a
// report (the first looks as synguard always has): colours unlike the
// kernel systems', and a dash-dot line. Their lines are drawn under the
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

// styleOf returns a variant's style: the kernel systems' own, and for
// synguard one per queue count in the report, in ascending order.
func (r *Report) styleOf(v variant) lineStyle {
	if v.sys != Synguard {
		return systemStyle[v.sys]
	}
	i := 0
	for _, w := range r.variants() {
		if w == v {
			break
		}
		if w.sys == Synguard {
			i++
		}
	}
	if i == 0 {
		return systemStyle[Synguard]
	}
	st := synguardMoreQueues[(i-1)%len(synguardMoreQueues)]
	st.dashes = []vg.Length{vg.Points(8), vg.Points(2), vg.Points(2), vg.Points(2)}
	return st
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

// WritePlots draws, against offered load, the SYN-ACK rate, the share of
// legitimate clients served and the CPU per SYN of every system, as PNGs
// in dir.
func (r *Report) WritePlots(dir string) error {
	plots := []struct {
		file, title, ylabel string
		y                   func(RunResult) float64
		diagonal            bool // draw y = x, "every SYN answered"
		ymax                float64
		legend              legendAt
	}{
		{PlotSynack, "SYN-ACKs answered", "SYN-ACK/s (thousands)",
			func(r RunResult) float64 { return r.SynackPPS / 1000 }, true, 0, legendAt{top: true, left: true}},
		{PlotLegit, "Legitimate clients served", "succeeded (%)",
			func(r RunResult) float64 { return 100 * r.LegitSuccess }, false, 105, legendAt{top: false, left: true}},
		{PlotCPU, "CPU per SYN beyond the baseline", "CPU µs per offered SYN",
			func(r RunResult) float64 { return r.CPUusPerSYN }, false, 0, legendAt{top: true, left: false}},
	}
	for _, pl := range plots {
		p := plot.New()
		p.Title.Text = pl.title
		p.X.Label.Text = "offered SYN/s (thousands)"
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
		for _, v := range r.variants() {
			var pts plotter.XYs
			for _, run := range r.Runs {
				if run.variant() == v {
					pts = append(pts, plotter.XY{X: run.OfferedPPS / 1000, Y: pl.y(run)})
					xmax = max(xmax, run.OfferedPPS/1000)
					ymax = max(ymax, pl.y(run))
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
			p.Add(line, points)
			p.Legend.Add(r.label(v), line, points)
		}
		if pl.diagonal && xmax > 0 {
			d, err := plotter.NewLine(plotter.XYs{{X: 0, Y: 0}, {X: xmax, Y: xmax}})
			if err != nil {
				return fmt.Errorf("plot %s: %w", pl.file, err)
			}
			d.Color = color.Gray{Y: 0x80}
			d.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			p.Add(d)
			p.Legend.Add("offered", d)
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

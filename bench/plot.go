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

// systemStyle gives each system the same colour and marker in every plot.
// Dashes differ too, so that lines lying on top of each other (every
// system at 100% of legitimate clients) stay visible.
var systemStyle = map[System]struct {
	color  color.Color
	shape  draw.GlyphDrawer
	dashes []vg.Length
}{
	Synguard: {color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, draw.CircleGlyph{}, nil},
	Synproxy: {color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, draw.SquareGlyph{}, []vg.Length{vg.Points(6), vg.Points(3)}},
	None:     {color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}, draw.TriangleGlyph{}, []vg.Length{vg.Points(2), vg.Points(2)}},
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
		for _, sys := range r.systems() {
			var pts plotter.XYs
			for _, run := range r.Runs {
				if run.System == sys {
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
			st := systemStyle[sys]
			line.Color = st.color
			line.Width = vg.Points(1.5)
			line.Dashes = st.dashes
			points.Color = st.color
			points.Shape = st.shape
			points.Radius = vg.Points(3)
			p.Add(line, points)
			p.Legend.Add(string(sys), line, points)
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

package telemetry

import (
	"embed"
	"io/fs"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The dashboard's page, script and style, compiled into the binary: the
// page loads nothing from anywhere but this server.
//
//go:embed dashboard/index.html dashboard/app.js dashboard/style.css
var dashboardFiles embed.FS

// Paths served by Handler.
const (
	PathMetrics = "/metrics"
	PathStats   = "/api/stats"
)

// Handler serves the Prometheus metrics (/metrics), the dashboard's JSON
// (/api/stats) and the dashboard itself (/, assets under /dashboard/).
func (t *Telemetry) Handler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(t.collector)
	assets, err := fs.Sub(dashboardFiles, "dashboard")
	if err != nil {
		panic(err) // the embed directive above guarantees the directory
	}
	mux := http.NewServeMux()
	mux.Handle(PathMetrics, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET "+PathStats, t.serveStats)
	mux.Handle("GET /dashboard/", selfContained(http.StripPrefix("/dashboard/", http.FileServerFS(assets))))
	mux.Handle("GET /{$}", selfContained(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, assets, "index.html")
	})))
	return mux
}

// selfContained forbids the page from loading anything from elsewhere, so
// a dashboard on an isolated gateway works the same as anywhere, and no
// asset can leak that it is being watched.
func selfContained(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Cache-Control", "no-cache")
		h.ServeHTTP(w, r)
	})
}

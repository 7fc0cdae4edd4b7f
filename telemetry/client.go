package telemetry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// ErrUnreachable is what FetchStats wraps when nothing answered at the
// address: refused, timed out, or no route.
var ErrUnreachable = errors.New("nothing answering")

// maxStatsBody bounds the document FetchStats reads: /api/stats is tens
// of kilobytes for a few services, so anything near this is not it.
const maxStatsBody = 16 << 20

// FetchStats reads the /api/stats document of the synguard whose metrics
// address is addr (HOST:PORT), with c (one that reaches addr: in tests
// from inside a network namespace). A failure to connect wraps
// ErrUnreachable; an answer that is not the document says so.
func FetchStats(ctx context.Context, c *http.Client, addr string) (StatsView, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+PathStats, nil)
	if err != nil {
		return StatsView{}, fmt.Errorf("stats from %s: %w", addr, err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return StatsView{}, fmt.Errorf("%w on %s: %w", ErrUnreachable, addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return StatsView{}, fmt.Errorf("%s answered %s for %s: not a synguard metrics address?", addr, resp.Status, PathStats)
	}
	var v StatsView
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxStatsBody)).Decode(&v); err != nil {
		return StatsView{}, fmt.Errorf("%s%s is not synguard's stats: %w", addr, PathStats, err)
	}
	return v, nil
}

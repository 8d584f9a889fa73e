package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/valet-broker/valet/broker"
)

//go:embed templates/*.html static/*
var files embed.FS

// page is what every page template gets: the layout's data and the
// page's own in Data.
type page struct {
	Title   string
	Nav     string // which tab is current
	Op      *broker.Operator
	CSRF    string
	Flashes []flash
	// Fresh is whether the operator may decide grants without signing in
	// again; FreshLogin is the window.
	Fresh      bool
	FreshLogin time.Duration
	Counts     navCounts
	Now        time.Time
	Data       any
}

// navCounts are the badges of the navigation.
type navCounts struct {
	Pending, Review, Irrevocable int
}

// pages holds one template set per page: the layout, the shared partials
// and the page.
type pages struct {
	m map[string]*template.Template
}

// staticVersions are content hashes of the static files, appended to
// their URLs so browsers may cache them until they change.
var staticVersions = map[string]string{}

func init() {
	entries, _ := fs.ReadDir(files, "static")
	for _, e := range entries {
		b, _ := files.ReadFile("static/" + e.Name())
		sum := sha256.Sum256(b)
		staticVersions[e.Name()] = hex.EncodeToString(sum[:6])
	}
}

func parsePages() (*pages, error) {
	funcs := template.FuncMap{
		"static": func(name string) string { return "/ui/static/" + name + "?v=" + staticVersions[name] },
		"utc":    func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") },
		"iso":    func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
		"since":  relTime,
		"dur":    humanDuration,
		"short":  func(s string) string { return shorten(s, 12) },
		"join":   strings.Join,
		"json":   prettyJSON,
		"add":    func(a, b int) int { return a + b },
		"dict":   dict,
		"agent":  agentPath,
	}
	entries, err := fs.Glob(files, "templates/*.html")
	if err != nil {
		return nil, err
	}
	p := &pages{m: map[string]*template.Template{}}
	for _, e := range entries {
		name := path.Base(e)
		if name == "layout.html" || name == "partials.html" {
			continue
		}
		t, err := template.New(name).Funcs(funcs).ParseFS(files, "templates/layout.html", "templates/partials.html", e)
		if err != nil {
			return nil, err
		}
		p.m[name] = t
	}
	return p, nil
}

// render executes a page into a buffer first, so a template error never
// sends half a page.
func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, p *page) {
	t := c.pages.m[name]
	if t == nil {
		c.log.Error("console: no such template", "template", name)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	if p.Now.IsZero() {
		p.Now = c.clock.Now()
	}
	p.FreshLogin = c.cc.FreshLogin.D()
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout", p); err != nil {
		c.log.Error("console: render", "template", name, "err", err)
		http.Error(w, "internal error; the server log has details", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(buf.Bytes())
	}
}

// messageData is a page that only says something.
type messageData struct {
	Heading string
	Message string
	Status  int
}

// renderMessage shows a short page with a heading and a message (errors,
// refusals).
func (c *Console) renderMessage(w http.ResponseWriter, r *http.Request, status int, heading, msg string) {
	p := &page{Title: heading, Data: messageData{Heading: heading, Message: msg, Status: status}}
	if se := c.sessions.peek(r); se != nil {
		c.fillLayout(r, p, se, "")
	}
	c.render(w, r, status, "message.html", p)
}

// fillLayout sets the layout's fields for a signed-in operator.
func (c *Console) fillLayout(r *http.Request, p *page, se *session, nav string) {
	op := se.op
	p.Op, p.CSRF, p.Nav = &op, se.csrf, nav
	p.Now = c.clock.Now()
	p.Fresh = se.fresh(p.Now, c.cc.FreshLogin.D())
	p.Flashes = c.sessions.takeFlashes(se.key)
	p.Counts = c.navCounts(r)
}

// serveStatic serves the embedded CSS and JavaScript.
func serveStatic(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("file")
	b, err := files.ReadFile("static/" + name)
	if err != nil || strings.Contains(name, "/") {
		http.NotFound(w, r)
		return
	}
	ct := mime.TypeByExtension(path.Ext(name))
	if ct == "" {
		ct = "application/octet-stream"
	}
	w.Header().Set("Content-Type", ct)
	if v := r.URL.Query().Get("v"); v != "" && v == staticVersions[name] {
		w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		w.Header().Set("Cache-Control", "no-cache")
	}
	if r.Method != http.MethodHead {
		_, _ = w.Write(b)
	}
}

// relTime says how far t is from now: "in 4m", "3h ago".
func relTime(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := t.Sub(now)
	switch {
	case d > -time.Second && d < time.Second:
		return "now"
	case d > 0:
		return "in " + humanDuration(d)
	default:
		return humanDuration(-d) + " ago"
	}
}

// humanDuration rounds a duration to its two largest units: "1h5m",
// "4m30s", "45s", "2d3h".
func humanDuration(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Round(time.Second).Seconds()))
	case d < time.Hour:
		d = d.Round(time.Second)
		m, s := int(d/time.Minute), int(d%time.Minute/time.Second)
		if s == 0 {
			return fmt.Sprintf("%dm", m)
		}
		return fmt.Sprintf("%dm%ds", m, s)
	case d < 48*time.Hour:
		d = d.Round(time.Minute)
		h, m := int(d/time.Hour), int(d%time.Hour/time.Minute)
		if m == 0 {
			return fmt.Sprintf("%dh", h)
		}
		return fmt.Sprintf("%dh%dm", h, m)
	default:
		d = d.Round(time.Hour)
		days, h := int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour)
		if h == 0 {
			return fmt.Sprintf("%dd", days)
		}
		return fmt.Sprintf("%dd%dh", days, h)
	}
}

// dict builds the argument of a partial template from key, value pairs.
func dict(kv ...any) (map[string]any, error) {
	if len(kv)%2 != 0 {
		return nil, fmt.Errorf("dict: odd number of arguments")
	}
	m := make(map[string]any, len(kv)/2)
	for i := 0; i < len(kv); i += 2 {
		k, ok := kv[i].(string)
		if !ok {
			return nil, fmt.Errorf("dict: key %v is not a string", kv[i])
		}
		m[k] = kv[i+1]
	}
	return m, nil
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func prettyJSON(v any) string {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

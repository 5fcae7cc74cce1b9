#!/usr/bin/env bash
# Vendor the JavaScript that the built book loads, so its pages work offline (file:// or any
# static host, no CDN at page-view time).
#
#   bash scripts/vendor_js.sh
#   .venv/bin/jupyter-book build . --path-output book -W -n --keep-going --all
#
# Installs the exact versions pinned in package.json / package-lock.json with `npm ci`, then
# copies only the files the pages load into book/vendor/ (gitignored). _config.yml names
# book/vendor in html_static_path, so Sphinx copies its contents to _build/html/_static/:
#
#   book/vendor/mathjax/tex-chtml.js               mathjax_path: mathjax/tex-chtml.js
#   book/vendor/mathjax/output/chtml/fonts/woff-v2 fonts tex-chtml.js loads lazily
#   book/vendor/mathjax/input/tex/extensions       TeX packages it autoloads (\require, \color, ...)
#   book/vendor/widgets/require.js                 nb_ipywidgets_js, 1st: RequireJS
#   book/vendor/widgets/offline.js                 nb_ipywidgets_js, 2nd: local paths, and a MathJax 3
#                                                  shim for widget labels (see below)
#   book/vendor/widgets/embed-amd.js               nb_ipywidgets_js, 3rd: widget manager; it bundles
#                                                  @jupyter-widgets/base, controls and output
#   book/vendor/widgets/*.woff2, *.woff            Font Awesome fonts its CSS loads lazily
#   book/vendor/widgets/modules/                   local stand-in for the widget "CDN" (empty)
#   book/vendor/vega/vega{,-lite,-embed}.min.js    the listening app's dashboard charts (served at /vendor/vega/)
#
# Not vendored (opt-in features of MathJax's right-click menu that would only 404 locally):
# the speech/explorer accessibility extensions (a11y/, sre/, ~4 MB) and the SVG renderer.
#
# Idempotent: book/vendor is rebuilt from scratch each run; `npm ci` is skipped while
# node_modules already matches package-lock.json.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

NM="$ROOT/node_modules"
STAMP="$NM/.accelerando-lock.sha256"
LOCK_SUM="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$LOCK_SUM" ]]; then
  # --ignore-scripts: the only install script (Font Awesome's) just prints an attribution notice.
  npm ci --ignore-scripts --no-audit --no-fund
  echo "$LOCK_SUM" > "$STAMP"
fi

MJ="$NM/mathjax/es5"
WM="$NM/@jupyter-widgets/html-manager/dist"
RJ="$NM/requirejs/require.js"
for f in "$MJ/tex-chtml.js" "$WM/embed-amd.js" "$RJ"; do
  [[ -f "$f" ]] || { echo "vendor_js.sh: missing $f (npm ci failed?)" >&2; exit 1; }
done

OUT="$ROOT/book/vendor"
TMP="$(mktemp -d "$ROOT/book/.vendor.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

# --- MathJax 3 (tex-chtml combined component + what it loads lazily)
mkdir -p "$TMP/mathjax/output/chtml/fonts" "$TMP/mathjax/input/tex"
cp "$MJ/tex-chtml.js" "$TMP/mathjax/"
cp -r "$MJ/output/chtml/fonts/woff-v2" "$TMP/mathjax/output/chtml/fonts/"
cp -r "$MJ/input/tex/extensions" "$TMP/mathjax/input/tex/"
cp "$NM/mathjax/LICENSE" "$TMP/mathjax/LICENSE"

# --- Jupyter widgets: RequireJS + the html-manager embedder + its Font Awesome fonts
mkdir -p "$TMP/widgets/modules"
cp "$RJ" "$TMP/widgets/require.js"
cp "$WM/embed-amd.js" "$TMP/widgets/embed-amd.js"
cp "$WM"/*.woff2 "$WM"/*.woff "$TMP/widgets/"
cp "$NM/@jupyter-widgets/html-manager/LICENSE" "$TMP/widgets/LICENSE.html-manager" 2>/dev/null || true
cp "$NM/requirejs/LICENSE" "$TMP/widgets/LICENSE.requirejs" 2>/dev/null || true
cat > "$TMP/widgets/modules/README.txt" <<'EOF'
Local stand-in for the widget CDN. embed-amd.js bundles @jupyter-widgets/base, controls and
output; a third-party widget module (e.g. jupyter-matplotlib) would be loaded from
modules/<npm name>@<model_module_version>/dist/index.js here instead of a CDN: vendor it with
scripts/vendor_js.sh if a chapter needs one.
EOF
cat > "$TMP/widgets/offline.js" <<'EOF'
/* Written by scripts/vendor_js.sh. Loaded after require.js and before embed-amd.js.
 * 1. Local paths, as absolute URLs computed from this script's own URL, so they are right at
 *    every page depth and nothing is fetched from the network:
 *    - embed-amd.js falls back to a CDN for widget modules it does not bundle (the URL comes from
 *      a data-jupyter-widgets-cdn attribute on any script tag, default jsDelivr): use modules/.
 *    - Its bundled CSS names the Font Awesome files relative to the RequireJS URL of the module
 *      that holds it (page folder + "@jupyter-widgets/html-manager/dist/"): map those module ids
 *      to this folder, where the fonts are. __jupyter_widgets_assets_path__ covers later assets.
 * 2. The widget manager typesets widget labels with the MathJax 2 API (MathJax.Hub.Queue), which
 *    throws under the MathJax 3 that the book loads: give MathJax 3 a minimal Hub.Queue. */
(function () {
  var s = document.currentScript;
  if (s && s.src) {
    var dir = s.src.replace(/[?#].*$/, "").replace(/[^\/]*$/, "");
    window.__jupyter_widgets_assets_path__ = dir;
    s.setAttribute("data-jupyter-widgets-cdn", dir + "modules/");
    if (window.requirejs) {
      window.requirejs.config({ paths: {
        "@jupyter-widgets/html-manager": dir + "html-manager",
        "@jupyter-widgets/html-manager/dist": dir.replace(/\/$/, "")
      } });
    }
  }
  function addHub() {
    var M = window.MathJax;
    if (!M || !M.version || M.Hub) { return; }
    M.Hub = {
      Queue: function () {
        var els = [];
        for (var i = 0; i < arguments.length; i++) {
          var a = arguments[i];
          if (Array.isArray(a) && a[0] === "Typeset" && a[2]) { els.push(a[2]); }
        }
        if (!els.length || !M.typesetPromise) { return Promise.resolve(); }
        var ready = (M.startup && M.startup.promise) || Promise.resolve();
        return ready.then(function () { return M.typesetPromise(els); });
      }
    };
  }
  if (document.readyState === "complete") { addHub(); }
  else { window.addEventListener("load", addHub); }
})();
EOF

# --- Vega-Lite (the listening app's dashboard draws its charts with it; vega-embed mounts them)
mkdir -p "$TMP/vega"
for pkg in vega vega-lite vega-embed; do
  [[ -f "$NM/$pkg/build/$pkg.min.js" ]] || { echo "vendor_js.sh: missing $NM/$pkg/build/$pkg.min.js" >&2; exit 1; }
  cp "$NM/$pkg/build/$pkg.min.js" "$TMP/vega/"
  cp "$NM/$pkg/LICENSE" "$TMP/vega/LICENSE.$pkg" 2>/dev/null || true
done

rm -rf "$OUT"
mv "$TMP" "$OUT"
trap - EXIT
chmod -R a+rX "$OUT"
echo "vendor_js.sh: $(du -sh "$OUT" | cut -f1) in ${OUT#$ROOT/} ($(find "$OUT" -type f | wc -l) files)"

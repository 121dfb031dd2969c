//! The dashboard's shared page frame, for the broker's dashboard and `claudemesh
//! dashboard --local`: one HTML [`escape`] that every value from a peer goes through,
//! the [`layout`] around every page, the headers every response carries, and the static
//! assets compiled into the binaries (no front-end toolchain: one stylesheet and one
//! small script, which only swaps in HTML the server rendered with this same escaping).
//! Its one dependency is `http`, for the header types.

/// The stylesheet, served at `…/assets/app.css`.
pub const APP_CSS: &str = include_str!("assets/app.css");
/// The script, served at `…/assets/app.js`.
pub const APP_JS: &str = include_str!("assets/app.js");

/// The policy every dashboard response carries: only this origin's script and style,
/// no inline code, no framing, forms and connections to this origin only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Give a dashboard response its security headers: [`CSP`], no sniffing, no framing,
/// `Referrer-Policy: same-origin` (not `no-referrer`: with it Chromium sends
/// `Origin: null` on same-origin form posts, which the CSRF check refuses), and
/// `Cache-Control: no-store` unless the response set its own.
pub fn secure(h: &mut http::HeaderMap) {
    use http::{HeaderValue, header};
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

/// The value of the cookie `name` in a request's headers.
pub fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// HTML-escape text for an element body or a quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The frame around every page; `assets` is where `app.css` and `app.js` are served
/// (`/dashboard/assets` on the broker, `/assets` locally), `home` the brand link.
pub fn layout(title: &str, assets: &str, home: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · claudemesh</title>\
         <link rel=\"stylesheet\" href=\"{assets}/app.css\">\
         <script src=\"{assets}/app.js\" defer></script></head>\
         <body><header><a class=\"brand\" href=\"{home}\">claudemesh</a></header>\n{body}\n</body></html>\n",
        escape(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_peer_text_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}

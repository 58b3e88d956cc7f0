//! Checks a finished output directory, and a tiny XML well-formedness checker for SVGs.

use std::path::Path;

use anyhow::{Context as _, bail};

use crate::results::{Results, SCHEMA, Status};

/// Checks a finished output dir is well formed:
///
/// - `results.json` parses, with schema [`SCHEMA`];
/// - `report.md` exists and mentions every scenario id (as `` `id` ``);
/// - every SVG it embeds (`](plots/….svg)`) exists and is well-formed XML with one root
///   `<svg>` element;
/// - every `Ok` scenario has at least one metric, and no median of an `Ok` scenario is
///   NaN unless its samples are empty.
///
/// Returns a short summary (scenario, plot and target counts).
///
/// # Errors
/// The first problem found, naming the file, scenario or metric.
pub fn check(out: &Path) -> anyhow::Result<String> {
    let json_path = out.join("results.json");
    let json = std::fs::read_to_string(&json_path)
        .with_context(|| format!("reading {}", json_path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&json)
        .with_context(|| format!("{} is not JSON", json_path.display()))?;
    let schema = value.get("schema").and_then(serde_json::Value::as_u64);
    if schema != Some(u64::from(SCHEMA)) {
        bail!(
            "{}: schema is {schema:?}, expected {SCHEMA}",
            json_path.display()
        );
    }
    let results: Results = serde_json::from_value(value)
        .with_context(|| format!("{} does not match schema {SCHEMA}", json_path.display()))?;

    for s in &results.scenarios {
        if s.status != Status::Ok {
            continue;
        }
        if s.metrics.is_empty() {
            bail!("scenario `{}` is ok but has no metric", s.id);
        }
        if let Some(m) = s
            .metrics
            .iter()
            .find(|m| m.median.is_nan() && !m.samples.is_empty())
        {
            bail!(
                "scenario `{}`: metric `{}` of `{}` has a NaN median with {} samples",
                s.id,
                m.name,
                m.variant,
                m.samples.len()
            );
        }
    }

    let md_path = out.join("report.md");
    let md = std::fs::read_to_string(&md_path)
        .with_context(|| format!("reading {}", md_path.display()))?;
    if let Some(s) = results
        .scenarios
        .iter()
        .find(|s| !md.contains(&format!("`{}`", s.id)))
    {
        bail!("{} does not mention scenario `{}`", md_path.display(), s.id);
    }
    let plots = svg_refs(&md);
    for rel in &plots {
        if rel.split('/').any(|part| part == ".." || part.is_empty()) {
            bail!(
                "{}: plot path `{rel}` leaves the output directory",
                md_path.display()
            );
        }
        let path = out.join(rel);
        let svg = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (embedded in report.md)", path.display()))?;
        well_formed(&svg)
            .map_err(|e| anyhow::anyhow!("{}: not well-formed: {e}", path.display()))?;
    }

    let count = |f: fn(&Status) -> bool| results.scenarios.iter().filter(|s| f(&s.status)).count();
    let targets: Vec<_> = results.scenarios.iter().flat_map(|s| &s.targets).collect();
    let met = targets.iter().filter(|t| t.met == Some(true)).count();
    let not_met = targets.iter().filter(|t| t.met == Some(false)).count();
    Ok(format!(
        "{} scenarios ({} ok, {} failed, {} skipped), {} plots, {} targets ({met} met, {not_met} not met){}",
        results.scenarios.len(),
        count(|s| matches!(s, Status::Ok)),
        count(|s| matches!(s, Status::Failed(_))),
        count(|s| matches!(s, Status::Skipped(_))),
        plots.len(),
        targets.len(),
        if results.quick { ", smoke run" } else { "" }
    ))
}

/// The `.svg` link targets of Markdown images/links (`](x.svg)`), in order, unique.
fn svg_refs(md: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, _) in md.match_indices("](") {
        let rest = &md[i + 2..];
        let Some(end) = rest.find(')') else { continue };
        let target = rest[..end].trim_start_matches('<').trim_end_matches('>');
        if target.ends_with(".svg") && !out.iter().any(|t| t == target) {
            out.push(target.to_owned());
        }
    }
    out
}

/// Whether `c` may start an XML name (ASCII subset plus any non-ASCII letter).
fn name_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || c == ':'
}

/// Whether `c` may continue an XML name.
fn name_char(c: char) -> bool {
    name_start(c) || c.is_ascii_digit() || c == '-' || c == '.'
}

/// Checks the entity references in text or an attribute value (`&…;` only as a known
/// entity or a character reference) and that it holds no `<`.
fn check_text(s: &str, at: usize) -> Result<(), String> {
    if let Some(p) = s.find('<') {
        return Err(format!("byte {}: `<` in text or attribute", at + p));
    }
    for (p, _) in s.match_indices('&') {
        let rest = &s[p + 1..];
        let end = rest
            .find(';')
            .ok_or_else(|| format!("byte {}: unterminated `&`", at + p))?;
        let entity = &rest[..end];
        let ok = match entity {
            "amp" | "lt" | "gt" | "quot" | "apos" => true,
            _ => entity.strip_prefix("#x").map_or_else(
                || {
                    entity
                        .strip_prefix('#')
                        .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
                },
                |h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()),
            ),
        };
        if !ok {
            return Err(format!("byte {}: unknown entity `&{entity};`", at + p));
        }
    }
    Ok(())
}

/// Parses a tag's inside (after `<`, before `>` or `/>`): name and attributes.
fn parse_tag(tag: &str, at: usize) -> Result<&str, String> {
    let name_end = tag.find(|c: char| !name_char(c)).unwrap_or(tag.len());
    let name = &tag[..name_end];
    if !name.starts_with(name_start) {
        return Err(format!("byte {at}: bad element name in `<{tag}>`"));
    }
    let mut rest = &tag[name_end..];
    let mut seen: Vec<&str> = Vec::new();
    loop {
        let trimmed = rest.trim_start();
        if trimmed.is_empty() {
            return Ok(name);
        }
        if trimmed.len() == rest.len() {
            return Err(format!(
                "byte {at}: missing space before attribute in <{name}>"
            ));
        }
        let eq = trimmed
            .find('=')
            .ok_or_else(|| format!("byte {at}: attribute without value in <{name}>"))?;
        let attr = trimmed[..eq].trim_end();
        if !attr.starts_with(name_start) || !attr.chars().all(name_char) {
            return Err(format!(
                "byte {at}: bad attribute name `{attr}` in <{name}>"
            ));
        }
        if seen.contains(&attr) {
            return Err(format!(
                "byte {at}: duplicate attribute `{attr}` in <{name}>"
            ));
        }
        seen.push(attr);
        let value = trimmed[eq + 1..].trim_start();
        let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'');
        let quote =
            quote.ok_or_else(|| format!("byte {at}: unquoted value of `{attr}` in <{name}>"))?;
        let close = value[1..]
            .find(quote)
            .ok_or_else(|| format!("byte {at}: unterminated value of `{attr}` in <{name}>"))?;
        check_text(&value[1..=close], at)?;
        rest = &value[close + 2..];
    }
}

/// The index of the `>` ending the tag `tag` starts with, skipping quoted values.
fn tag_end(tag: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in tag.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return Some(i),
            _ => {}
        }
    }
    None
}

/// Checks `xml` is well-formed enough for an SVG: tags balance, attributes are quoted,
/// entities are known, and there is exactly one root element, `<svg>` (an XML
/// declaration, comments and whitespace may surround it).
pub(crate) fn well_formed(xml: &str) -> Result<(), String> {
    let mut stack: Vec<&str> = Vec::new();
    let mut roots = 0;
    let mut pos = 0;
    while pos < xml.len() {
        let rest = &xml[pos..];
        let Some(lt) = rest.find('<') else {
            if !rest.trim().is_empty() {
                return Err(format!("byte {pos}: text after the root element"));
            }
            break;
        };
        let text = &rest[..lt];
        if stack.is_empty() && !text.trim().is_empty() {
            return Err(format!("byte {pos}: text outside the root element"));
        }
        check_text(text, pos)?;
        pos += lt;
        let rest = &xml[pos..];
        let (terminator, kind) = if rest.starts_with("<!--") {
            ("-->", 'c')
        } else if rest.starts_with("<?") {
            ("?>", 'p')
        } else if rest.starts_with("<![CDATA[") {
            ("]]>", 'd')
        } else if rest.starts_with("<!") {
            (">", 'c')
        } else {
            (">", 't')
        };
        let end = if kind == 't' {
            tag_end(rest)
        } else {
            rest.find(terminator)
        };
        let end = end.ok_or_else(|| format!("byte {pos}: unterminated markup"))?;
        let inner = &rest[1..end];
        let next = pos + end + terminator.len();
        match kind {
            'd' if stack.is_empty() => {
                return Err(format!("byte {pos}: CDATA outside the root element"));
            }
            'p' if inner.starts_with("?xml ") && pos != 0 => {
                return Err(format!("byte {pos}: XML declaration not at the start"));
            }
            't' => {
                if let Some(close) = inner.strip_prefix('/') {
                    let open = stack
                        .pop()
                        .ok_or_else(|| format!("byte {pos}: `</{close}>` closes nothing"))?;
                    if close.trim_end() != open {
                        return Err(format!(
                            "byte {pos}: `</{}>` closes `<{open}>`",
                            close.trim_end()
                        ));
                    }
                } else {
                    let (inner, empty) = inner
                        .strip_suffix('/')
                        .map_or((inner, false), |i| (i, true));
                    let name = parse_tag(inner, pos)?;
                    if stack.is_empty() {
                        roots += 1;
                        if roots > 1 {
                            return Err(format!("byte {pos}: a second root element `<{name}>`"));
                        }
                        if name != "svg" {
                            return Err(format!(
                                "byte {pos}: root element is `<{name}>`, not `<svg>`"
                            ));
                        }
                    }
                    if !empty {
                        stack.push(name);
                    }
                }
            }
            _ => {}
        }
        pos = next;
    }
    if let Some(open) = stack.last() {
        return Err(format!("`<{open}>` is never closed"));
    }
    if roots == 0 {
        return Err("no root element".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_accepts_good_svg() {
        well_formed("<?xml version=\"1.0\"?>\n<!-- c --><svg a=\"1>2\" b='x &amp; &#38; &#x26;'><g><text>a &lt; b</text></g><rect/></svg>\n").unwrap();
    }

    #[test]
    fn well_formed_rejects_bad_svg() {
        for (bad, why) in [
            ("<svg><g></svg>", "closes"),
            ("<svg></svg><svg></svg>", "second root"),
            ("<html></html>", "not `<svg>`"),
            ("<svg a=1></svg>", "unquoted"),
            ("<svg a=\"1\" a=\"2\"></svg>", "duplicate"),
            ("<svg a=\"1\"b=\"2\"></svg>", "missing space"),
            ("<svg><text>a & b</text></svg>", "unterminated `&`"),
            ("<svg><text>&nbsp;</text></svg>", "unknown entity"),
            ("<svg><g>", "never closed"),
            ("x<svg></svg>", "outside"),
            ("<svg></svg>x", "after"),
            ("</svg>", "closes nothing"),
            ("<svg a=\"<\"></svg>", "`<`"),
            ("<svg a=\"1></svg>", "unterminated markup"),
            ("", "no root"),
            ("<svg><!-- </svg>", "unterminated"),
        ] {
            let err = well_formed(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn svg_refs_finds_embedded_plots() {
        let md = "![a](plots/a.svg) [b](plots/b.svg) ![a](plots/a.svg) [c](logs/c.json) ![d](<plots/d e.svg>)";
        assert_eq!(
            svg_refs(md),
            ["plots/a.svg", "plots/b.svg", "plots/d e.svg"]
        );
    }
}

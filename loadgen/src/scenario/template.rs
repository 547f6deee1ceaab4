//! Templates: `{{ expression }}` inside strings, compiled once, rendered per request.
//!
//! Expressions: a variable (`token`, `users.email`, `run`), or a function: `pick('a', 'b')`,
//! `random_int(1, 100)`, `uuid()`, `env('NAME')` or `env('NAME', 'default')` (read when the
//! scenario loads).

use std::fmt::Write as _;

use crate::rng::Rng;

/// Where a variable's value comes from at run time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Var {
    /// A capture of an earlier step of the journey: its slot.
    Capture(usize),
    /// A column of a data feeder's current row: (feeder, column).
    Data(usize, usize),
    /// The run id.
    Run,
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    Var(Var),
    Pick(Vec<String>),
    RandomInt(i64, i64),
    Uuid,
}

/// A compiled template.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

/// What a template may refer to, and how to resolve names.
pub trait Scope {
    /// The variable `name` (`token`, `users.email`), if defined here.
    fn resolve(&self, name: &str) -> Option<Var>;
    /// Names that are defined, for "did you mean" hints.
    fn names(&self) -> Vec<String>;
}

/// Why a template does not compile. `offset` is the byte offset in the template text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError {
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

fn err(message: impl Into<String>, hint: Option<String>) -> TemplateError {
    TemplateError { message: message.into(), hint }
}

/// Values the template reads when rendered.
pub(crate) trait Values {
    /// The current value of `var`.
    fn get(&self, var: &Var) -> &str;
}

impl Template {
    /// Compiles `text`, resolving variables in `scope`.
    pub fn compile(text: &str, scope: &dyn Scope) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| {
                err("`{{` without a closing `}}`", Some("close the expression with `}}`".into()))
            })?;
            parts.push(compile_expr(after[..end].trim(), scope)?);
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    /// A template with no expressions.
    pub fn literal(text: &str) -> Self {
        Template { parts: vec![Part::Text(text.to_owned())] }
    }

    /// The text, if the template has no expressions.
    pub fn as_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Text(t)] => Some(t),
            _ => None,
        }
    }

    /// The whole text, if every part is known when the scenario loads (text and `env()`).
    pub fn as_text(&self) -> Option<String> {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect::<Option<Vec<&str>>>()
            .map(|v| v.concat())
    }

    /// Renders into `out`.
    pub(crate) fn render_into(&self, out: &mut String, values: &dyn Values, rng: &mut Rng) {
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => out.push_str(values.get(v)),
                Part::Pick(options) => out.push_str(&options[rng.below(options.len() as u64) as usize]),
                Part::RandomInt(lo, hi) => {
                    let span = (*hi - *lo) as u64 + 1;
                    let _ = write!(out, "{}", *lo + rng.below(span) as i64);
                }
                Part::Uuid => {
                    let (a, b) = (rng.next_u64(), rng.next_u64());
                    // Version 4, variant 1.
                    let a = (a & 0xffff_ffff_ffff_0fff) | 0x4000;
                    let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
                    let _ = write!(
                        out,
                        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                        a >> 32,
                        (a >> 16) & 0xffff,
                        a & 0xffff,
                        b >> 48,
                        b & 0xffff_ffff_ffff
                    );
                }
            }
        }
    }

    /// Renders to a new string.
    pub(crate) fn render(&self, values: &dyn Values, rng: &mut Rng) -> String {
        let mut out = String::new();
        self.render_into(&mut out, values, rng);
        out
    }
}

fn is_ident(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn compile_expr(expr: &str, scope: &dyn Scope) -> Result<Part, TemplateError> {
    if expr.is_empty() {
        return Err(err(
            "empty expression `{{ }}`",
            Some("write a variable such as `{{ token }}` or a function such as `{{ uuid() }}`".into()),
        ));
    }
    if let Some(open) = expr.find('(') {
        let name = expr[..open].trim();
        let args =
            expr[open + 1..].strip_suffix(')').ok_or_else(|| err(format!("`{expr}`: missing `)`"), None))?;
        let args = parse_args(args).map_err(|m| err(format!("`{expr}`: {m}"), None))?;
        return match name {
            "pick" => {
                let options: Vec<String> = args.into_iter().map(|a| a.text).collect();
                if options.is_empty() {
                    return Err(err(
                        "`pick()` needs at least one value",
                        Some("e.g. `pick('shoes', 'hats')`".into()),
                    ));
                }
                Ok(Part::Pick(options))
            }
            "random_int" => {
                let nums: Vec<i64> = args.iter().filter_map(|a| a.int).collect();
                match (nums.as_slice(), args.len()) {
                    ([lo, hi], 2) if lo <= hi => Ok(Part::RandomInt(*lo, *hi)),
                    _ => Err(err(
                        format!("`{expr}`: random_int takes two integers, low <= high"),
                        Some("e.g. `random_int(1, 100)`".into()),
                    )),
                }
            }
            "uuid" if args.is_empty() => Ok(Part::Uuid),
            "uuid" => Err(err("`uuid()` takes no arguments", None)),
            "env" => match args.as_slice() {
                [a] if a.int.is_none() => match std::env::var(&a.text) {
                    Ok(v) => Ok(Part::Text(v)),
                    Err(_) => Err(err(
                        format!("environment variable `{}` is not set", a.text),
                        Some(format!("export {}=… before running, or remove the reference", a.text)),
                    )),
                },
                // A default for an unset variable: a scenario that runs as written and can be
                // pointed elsewhere from the environment.
                [a, default] if a.int.is_none() => {
                    Ok(Part::Text(std::env::var(&a.text).unwrap_or_else(|_| default.text.clone())))
                }
                _ => Err(err(
                    "`env()` takes a name and an optional default, e.g. `env('API_KEY')` or `env('HOST', 'localhost')`",
                    None,
                )),
            },
            other => Err(err(
                format!("unknown function `{other}`"),
                Some(suggest(other, &["pick", "random_int", "uuid", "env"]).map_or_else(
                    || "functions are pick, random_int, uuid, env".to_owned(),
                    |s| format!("did you mean `{s}`?"),
                )),
            )),
        };
    }
    let valid_path = expr.split('.').all(is_ident);
    if !valid_path {
        return Err(err(format!("`{expr}` is not a variable name or a function call"), None));
    }
    match scope.resolve(expr) {
        Some(v) => Ok(Part::Var(v)),
        None => {
            let names = scope.names();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let hint = match suggest(expr, &refs) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!(
                    "capture it in an earlier step (`capture:`) or add a data feeder (`data:`); defined here: {}",
                    refs.join(", ")
                ),
            };
            Err(err(format!("undefined variable `{expr}`"), Some(hint)))
        }
    }
}

struct Arg {
    text: String,
    int: Option<i64>,
}

fn parse_args(s: &str) -> Result<Vec<Arg>, String> {
    let mut args = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let (arg, after) = if let Some(q) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') {
            let body = &rest[1..];
            let end = body.find(q).ok_or("unterminated string")?;
            (Arg { text: body[..end].to_owned(), int: None }, &body[end + 1..])
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            let token = rest[..end].trim();
            let int = token
                .parse::<i64>()
                .map_err(|_| format!("`{token}` is neither a quoted string nor an integer"))?;
            (Arg { text: token.to_owned(), int: Some(int) }, &rest[end..])
        };
        args.push(arg);
        rest = after.trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
            if rest.is_empty() {
                return Err("trailing comma".into());
            }
        } else if !rest.is_empty() {
            return Err(format!("expected `,` before `{rest}`"));
        }
    }
    Ok(args)
}

/// The closest of `candidates` to `word` (edit distance at most 2, or a prefix).
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (distance(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(word.len() / 4) || c.starts_with(word))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    struct S;
    impl Scope for S {
        fn resolve(&self, name: &str) -> Option<Var> {
            match name {
                "token" => Some(Var::Capture(0)),
                "users.email" => Some(Var::Data(0, 1)),
                "run" => Some(Var::Run),
                _ => None,
            }
        }
        fn names(&self) -> Vec<String> {
            vec!["token".into(), "users.email".into(), "run".into()]
        }
    }
    struct V;
    impl Values for V {
        fn get(&self, var: &Var) -> &str {
            match var {
                Var::Capture(0) => "T0K",
                Var::Data(0, 1) => "a@b.invalid",
                Var::Run => "r1",
                _ => "?",
            }
        }
    }

    #[test]
    fn compiles_and_renders() {
        let mut rng = Rng::new(7);
        let t = Template::compile("Bearer {{ token }} for {{users.email}} in {{ run }}", &S).unwrap();
        assert_eq!(t.render(&V, &mut rng), "Bearer T0K for a@b.invalid in r1");
        let t = Template::compile("/p/{{ random_int(1, 3) }}?q={{ pick('a', \"b\") }}", &S).unwrap();
        for _ in 0..50 {
            let s = t.render(&V, &mut rng);
            let n: i64 = s[3..4].parse().unwrap();
            assert!((1..=3).contains(&n), "{s}");
            assert!(s.ends_with("q=a") || s.ends_with("q=b"), "{s}");
        }
        let u = Template::compile("{{ uuid() }}", &S).unwrap().render(&V, &mut rng);
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_eq!(Template::compile("plain", &S).unwrap().as_literal(), Some("plain"));
    }

    #[test]
    fn errors_say_how_to_fix() {
        let e = Template::compile("{{ tokn }}", &S).unwrap_err();
        assert_eq!(e.message, "undefined variable `tokn`");
        assert_eq!(e.hint.as_deref(), Some("did you mean `token`?"));
        let e = Template::compile("{{ randon_int(1, 2) }}", &S).unwrap_err();
        assert_eq!(e.hint.as_deref(), Some("did you mean `random_int`?"));
        assert!(Template::compile("{{ random_int(3, 1) }}", &S).is_err());
        assert!(Template::compile("{{ token", &S).is_err());
        assert!(Template::compile("{{ }}", &S).is_err());
        assert!(Template::compile("{{ pick() }}", &S).is_err());
        assert!(
            Template::compile("{{ env('SYNTH_SURELY_UNSET_VAR') }}", &S)
                .unwrap_err()
                .message
                .contains("not set")
        );
        assert!(Template::compile("{{ a b }}", &S).is_err());
        assert!(Template::compile("{{ env('A', 'b', 'c') }}", &S).is_err());
    }

    #[test]
    fn env_with_a_default_uses_it_when_unset() {
        let t =
            Template::compile("{{ env('SYNTH_SURELY_UNSET_VAR', 'http://127.0.0.1:7001') }}", &S).unwrap();
        assert_eq!(t.as_literal(), Some("http://127.0.0.1:7001"));
        let path = std::env::var("PATH").unwrap();
        let t = Template::compile("{{ env('PATH', 'unused') }}", &S).unwrap();
        assert_eq!(t.as_literal(), Some(path.as_str()), "a set variable wins over the default");
    }
}

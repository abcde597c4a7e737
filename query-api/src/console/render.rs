//! The console's templates (minijinja), compiled into the binary with `include_str!` so
//! nothing is read from disk or fetched at run time. Every template ends in `.html`, so
//! minijinja escapes every value put into it (owner names, references, correlation ids,
//! actors, event data): markup from users shows as text. Only the server-drawn chart is
//! passed as safe.

use std::sync::LazyLock;

use minijinja::Environment;

use super::assets;

/// Every template, by name.
const TEMPLATES: &[(&str, &str)] = &[
    ("layout.html", include_str!("templates/layout.html")),
    ("index.html", include_str!("templates/index.html")),
    ("error.html", include_str!("templates/error.html")),
    ("accounts.html", include_str!("templates/accounts.html")),
    ("account.html", include_str!("templates/account.html")),
    ("transfer.html", include_str!("templates/transfer.html")),
    ("audit.html", include_str!("templates/audit.html")),
    ("projections.html", include_str!("templates/projections.html")),
    ("verify.html", include_str!("templates/verify.html")),
];

static ENVIRONMENT: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut environment = Environment::new();
    // Undefined values are an error, not an empty string, so a template that names a
    // field the page does not give fails its test instead of rendering a blank.
    environment.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    for (name, source) in TEMPLATES {
        if let Err(error) = environment.add_template(name, source) {
            tracing::error!(template = name, %error, "a console template does not parse");
        }
    }
    // Our own URLs, marked safe so they are not entity-escaped (`/` becomes `&#x2f;`).
    environment.add_global(
        "stylesheet",
        minijinja::Value::from_safe_string(assets::STYLESHEET.url()),
    );
    environment.add_global("script", minijinja::Value::from_safe_string(assets::SCRIPT.url()));
    environment
});

/// Why a page could not be rendered: a bug in a template, found by the tests.
#[derive(Debug, thiserror::Error)]
#[error("console template {template} failed")]
pub struct RenderError {
    template: &'static str,
    #[source]
    source: minijinja::Error,
}

/// `template` rendered with `context`.
pub fn render(template: &'static str, context: minijinja::Value) -> Result<String, RenderError> {
    ENVIRONMENT
        .get_template(template)
        .and_then(|compiled| compiled.render(context))
        .map_err(|source| RenderError { template, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        for (name, _) in TEMPLATES {
            assert!(ENVIRONMENT.get_template(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn values_are_escaped_in_html_templates() {
        let page = render(
            "error.html",
            minijinja::context! {
                title => "Not found",
                status => 404,
                message => "<img src=x onerror=alert(1)>",
                nav => minijinja::value::Serde(super::super::pages::Nav::default()),
            },
        )
        .expect("renders");
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"), "{page}");
        assert!(!page.contains("<img src=x"));
    }
}

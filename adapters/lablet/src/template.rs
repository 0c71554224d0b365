//! URL / location templates with `{placeholder}` substitution.

use std::collections::BTreeMap;

/// A placeholder in a template had no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template {template:?} uses {{{placeholder}}}, which has no value")]
pub struct TemplateError {
    /// The template.
    pub template: String,
    /// The placeholder without braces.
    pub placeholder: String,
}

/// Replace every `{key}` in `template` by `vars[key]`; an unknown key is an error.
/// A `{` not closed by `}` is kept as text.
pub(crate) fn render(
    template: &str,
    vars: &BTreeMap<String, String>,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return Ok(out);
        };
        let key = &after[..close];
        match vars.get(key) {
            Some(value) => out.push_str(value),
            None => {
                return Err(TemplateError {
                    template: template.to_owned(),
                    placeholder: key.to_owned(),
                });
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_known_and_rejects_unknown_placeholders() {
        let vars = BTreeMap::from([
            ("name".to_owned(), "LAB-1".to_owned()),
            ("MOSAIC_BASE_URL".to_owned(), "http://m".to_owned()),
        ]);
        assert_eq!(
            render("{MOSAIC_BASE_URL}/p/{name}.zip", &vars).unwrap(),
            "http://m/p/LAB-1.zip"
        );
        let err = render("{nope}/x", &vars).unwrap_err();
        assert_eq!(err.placeholder, "nope");
        assert_eq!(render("a{b", &vars).unwrap(), "a{b");
    }
}

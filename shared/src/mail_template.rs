//! A report mail's words: subject, plain-text and HTML bodies rendered from the report's
//! templates (`subject`, `body_text`, `body_html` in `reports.toml`; sensible defaults when a
//! report has none) with MiniJinja. HTML bodies are auto-escaped; an unknown variable is an
//! error, so `charlie config check` catches a typo before a mail goes out.
//!
//! Variables: `report`, `title`, `period`, `time_zone`, `rows`, `warnings` (list of text),
//! `attached` (the workbook is attached), `link` and `link_expires` (when it is too large to
//! attach and goes as a download link instead), `no_data` (the period had no rows).

use minijinja::{Environment, UndefinedBehavior, context};

pub const DEFAULT_TEXT: &str = "\
Hello,

{% if no_data -%}
there was no data for the {{ title }} for {{ period }} (times in {{ time_zone }}), so no workbook \
is attached.
{%- elif link -%}
the {{ title }} for {{ period }} ({{ rows }} rows, times in {{ time_zone }}) is too large to \
attach. Download it here until {{ link_expires }}:

{{ link }}
{%- else -%}
attached is the {{ title }} for {{ period }} ({{ rows }} rows, times in {{ time_zone }}).
{%- endif %}
{% if warnings %}
Please note:
{% for w in warnings %}- {{ w }}
{% endfor %}{% endif %}
This mail was sent by Charlie; reply to reach the operations team.
";

pub const DEFAULT_HTML: &str = "\
<!doctype html><html><body style=\"font-family:Segoe UI,Arial,sans-serif\">\
<p>Hello,</p>\
{% if no_data %}<p>there was <b>no data</b> for the <b>{{ title }}</b> for <b>{{ period }}</b> \
(times in {{ time_zone }}), so no workbook is attached.</p>\
{% elif link %}<p>the <b>{{ title }}</b> for <b>{{ period }}</b> ({{ rows }} rows, times in \
{{ time_zone }}) is too large to attach. <a href=\"{{ link }}\">Download it</a> until \
{{ link_expires }}.</p>\
{% else %}<p>attached is the <b>{{ title }}</b> for <b>{{ period }}</b> ({{ rows }} rows, times \
in {{ time_zone }}).</p>{% endif %}\
{% if warnings %}<p>Please note:</p><ul>{% for w in warnings %}<li>{{ w }}</li>{% endfor %}</ul>\
{% endif %}\
<p style=\"color:#666\">This mail was sent by Charlie; reply to reach the operations team.</p>\
</body></html>";

/// What a mail says about its run.
#[derive(Debug, Clone, Default)]
pub struct MailFacts<'a> {
    pub report: &'a str,
    pub period: &'a str,
    pub rows: u64,
    pub warnings: &'a [String],
    /// A download link and its expiry, when the workbook is not attached.
    pub link: Option<(&'a str, &'a str)>,
    pub no_data: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RenderedMail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{part} template of report {report}: {message}")]
pub struct TemplateError {
    pub report: String,
    /// `subject`, `body_text` or `body_html`.
    pub part: &'static str,
    pub message: String,
}

/// A report's mail templates and the facts of the report they name (`definitions::Report`
/// gives them; this module depends on no definition type).
#[derive(Debug, Clone, Copy)]
pub struct Templates<'a> {
    pub title: &'a str,
    pub time_zone: &'a str,
    pub subject: &'a str,
    pub body_text: Option<&'a str>,
    pub body_html: Option<&'a str>,
}

/// Renders the report's subject (always), and its bodies unless `subject_only`.
pub fn render(
    report: &Templates<'_>,
    facts: &MailFacts,
    subject_only: bool,
) -> Result<RenderedMail, TemplateError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    let ctx = context! {
        report => facts.report,
        title => report.title,
        period => facts.period,
        time_zone => report.time_zone,
        rows => facts.rows,
        warnings => facts.warnings,
        attached => facts.link.is_none() && !facts.no_data,
        link => facts.link.map(|(url, _)| url),
        link_expires => facts.link.map(|(_, expires)| expires),
        no_data => facts.no_data,
    };
    let part = |name: &'static str, file: &str, source: &str| {
        env.render_named_str(file, source, &ctx)
            .map_err(|e| TemplateError {
                report: facts.report.to_owned(),
                part: name,
                message: describe(&e),
            })
    };
    // A subject is one line, whatever the template's whitespace.
    let subject = part("subject", "subject.txt", report.subject)?
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if subject_only {
        return Ok(RenderedMail {
            subject,
            text: String::new(),
            html: String::new(),
        });
    }
    let text = part(
        "body_text",
        "body.txt",
        report.body_text.unwrap_or(DEFAULT_TEXT),
    )?;
    let html = part(
        "body_html",
        "body.html",
        report.body_html.unwrap_or(DEFAULT_HTML),
    )?;
    Ok(RenderedMail {
        subject,
        text,
        html,
    })
}

/// Renders every template of `report` in each case a mail can be in (attached, link, no data,
/// with warnings), so that a template that cannot render is found before a run needs it.
pub fn check(name: &str, report: &Templates<'_>) -> Result<(), TemplateError> {
    let warnings = ["A warning".to_owned()];
    let cases = [
        MailFacts {
            report: name,
            period: "2024-03-14",
            rows: 42,
            warnings: &warnings,
            ..Default::default()
        },
        MailFacts {
            report: name,
            period: "2024-W11",
            rows: 42,
            link: Some(("https://example.com/report.xlsx", "2024-03-22")),
            ..Default::default()
        },
        MailFacts {
            report: name,
            period: "2024-03",
            no_data: true,
            ..Default::default()
        },
    ];
    for facts in &cases {
        render(report, facts, false)?;
    }
    Ok(())
}

/// The error with its line, without MiniJinja's multi-line debug rendering.
fn describe(e: &minijinja::Error) -> String {
    let mut text = e.kind().to_string();
    if let Some(detail) = e.detail() {
        text.push_str(": ");
        text.push_str(detail);
    }
    if let Some(line) = e.line() {
        text.push_str(&format!(" (template line {line})"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::Definitions;

    fn report(extra: &str) -> Definitions {
        let text = include_str!("../../reports.toml").replacen(
            "on_empty = \"skip\"",
            &format!("on_empty = \"skip\"\n{extra}"),
            1,
        );
        Definitions::parse(&text).unwrap()
    }

    #[test]
    fn the_default_templates_say_what_the_mail_carries() {
        let defs = report("");
        let r = &defs.reports["call_centre_daily"];
        let warnings = ["3 cell(s) were cut".to_owned()];
        let attached = render(
            &r.templates(),
            &MailFacts {
                report: "call_centre_daily",
                period: "2024-03-14",
                rows: 581,
                warnings: &warnings,
                ..Default::default()
            },
            false,
        )
        .unwrap();
        assert_eq!(attached.subject, "Call-centre daily report for 2024-03-14");
        assert!(attached.text.contains("attached is the Call-centre daily report for 2024-03-14 (581 rows, times in Europe/London)"), "{}", attached.text);
        assert!(attached.text.contains("- 3 cell(s) were cut"));
        assert!(attached.html.contains("<li>3 cell(s) were cut</li>"));
        let link = render(
            &r.templates(),
            &MailFacts {
                report: "call_centre_daily",
                period: "2024-03-14",
                rows: 581,
                link: Some(("https://s3.example/x.xlsx?sig=a&b=c", "2024-03-22")),
                ..Default::default()
            },
            false,
        )
        .unwrap();
        assert!(link.text.contains("too large to attach"));
        assert!(link.text.contains("https://s3.example/x.xlsx?sig=a&b=c"));
        assert!(link.text.contains("until 2024-03-22"));
        // Escaped for HTML (MiniJinja also escapes `/`), the same link once decoded.
        assert!(
            link.html
                .contains("href=\"https:&#x2f;&#x2f;s3.example&#x2f;x.xlsx?sig=a&amp;b=c\""),
            "{}",
            link.html
        );
        let none = render(
            &r.templates(),
            &MailFacts {
                report: "call_centre_daily",
                period: "2024-03-16",
                no_data: true,
                ..Default::default()
            },
            false,
        )
        .unwrap();
        assert!(
            none.text
                .contains("no data for the Call-centre daily report for 2024-03-16")
        );
    }

    #[test]
    fn a_reports_own_templates_are_used_and_html_is_escaped() {
        let text = include_str!("../../reports.toml")
            .replacen(
                "title = \"Call-centre daily report\"",
                "title = \"Calls <&> dials\"\nbody_text = \"{{ rows }} rows for {{ period }}\"\nbody_html = \"<p>{{ title }}</p>\"",
                1,
            );
        let defs = Definitions::parse(&text).unwrap();
        let mail = render(
            &defs.reports["call_centre_daily"].templates(),
            &MailFacts {
                report: "call_centre_daily",
                period: "2024-03-14",
                rows: 7,
                ..Default::default()
            },
            false,
        )
        .unwrap();
        assert_eq!(mail.text, "7 rows for 2024-03-14");
        assert_eq!(mail.html, "<p>Calls &lt;&amp;&gt; dials</p>");
        assert_eq!(
            mail.subject, "Calls <&> dials for 2024-03-14",
            "a subject is not HTML"
        );
    }

    #[test]
    fn a_template_that_cannot_render_is_a_configuration_error() {
        let broken = |extra: &str| {
            let text = include_str!("../../reports.toml").replacen(
                "on_empty = \"skip\"",
                &format!("on_empty = \"skip\"\n{extra}"),
                1,
            );
            Definitions::parse(&text).unwrap_err().to_string()
        };
        let err = broken("body_text = \"{{ rowz }} rows\"");
        assert!(
            err.contains("body_text template of report call_centre_daily: undefined value"),
            "{err}"
        );
        assert!(
            err.contains("line "),
            "with the line in reports.toml: {err}"
        );
        let err = broken("body_html = \"{% if rows %}unclosed\"");
        assert!(
            err.contains("body_html template of report call_centre_daily"),
            "{err}"
        );
        let err = broken("body_text = \"{{ rows | no_such_filter }}\"");
        assert!(err.contains("body_text"), "{err}");
    }
}

//! The Outlook side of charlie-relay's Outlook source: what the relay needs from one folder of
//! the running Outlook profile, as plain data (an [`Item`] and its attachments), and the rule
//! naming that folder ([`FolderPath`]).
//!
//! The only Windows code is `com` (compiled for Windows only): it walks Outlook's object model
//! through COM automation and fills these types. What becomes of an item once it is data (the
//! MIME message built from it, the cursor, the journal) is the relay's portable, tested code.

use std::fmt;

#[cfg(windows)]
mod com;

/// How deep attached Outlook items are followed (an item forwarded as an attachment, inside
/// another: the same depth the raw-mail reader follows attached messages).
pub const MAX_DEPTH: usize = 4;

/// One mail item of the folder, as listed: enough to decide whether to read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    /// Outlook's EntryID (hex): stable while the item stays in its store.
    pub entry_id: String,
    /// `ReceivedTime`: an OLE automation date in the machine's local time (days since
    /// 1899-12-30). Only compared with other `ReceivedTime`s of the same machine.
    pub received: f64,
}

/// One mail item, read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Item {
    pub entry_id: String,
    /// The internet headers the item arrived with (`PR_TRANSPORT_MESSAGE_HEADERS`), CRLF
    /// separated and folded as received; none for mail that never crossed SMTP (sent inside
    /// one Exchange organisation) or was made in Outlook.
    pub internet_headers: Option<String>,
    /// `PR_INTERNET_MESSAGE_ID` (Graph's `internetMessageId`), angle brackets included.
    pub message_id: Option<String>,
    pub sender_name: String,
    /// The sender's SMTP address (`PR_SENDER_SMTP_ADDRESS`; for an Exchange sender the
    /// `SenderEmailAddress` is an X.500 DN, not an address).
    pub sender_address: String,
    pub subject: String,
    /// `ReceivedTime` in UTC, as an OLE automation date.
    pub received_utc: Option<f64>,
    /// The plain-text body.
    pub body: String,
    pub attachments: Vec<Attachment>,
    /// Attachments that carry nothing to send (a link to a file, an OLE object), with why.
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    /// `FileName` (for an attached item: its subject and `.msg`).
    pub name: String,
    pub content: Content,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// A file attached by value: its bytes.
    File(Vec<u8>),
    /// An Outlook item attached (a mail forwarded as an attachment): the item, read.
    Item(Box<Item>),
    /// An attached item nested deeper than [`MAX_DEPTH`], or one Outlook cannot open: its
    /// `.msg` bytes as saved.
    Msg(Vec<u8>),
}

/// One Outlook folder, as the relay's Outlook source uses it. Implemented by the COM code on
/// Windows and by fakes in tests; it lives on the one thread that opened it.
pub trait Folder {
    /// Outlook's own path of the folder (`\\ops@branch.example\Inbox\Exports`).
    fn describe(&self) -> String;
    /// How many items the folder holds.
    fn count(&mut self) -> Result<usize, Error>;
    /// The mail items received at or after `not_before` (all of them when `None`), newest
    /// first.
    fn list(&mut self, not_before: Option<f64>) -> Result<Vec<Listed>, Error>;
    /// One item, read with its attachments.
    fn item(&mut self, entry_id: &str) -> Result<Item, Error>;
}

/// A report mail to send through Outlook: Outlook builds its own MIME from these.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outgoing {
    /// The account to send from: an account of the profile with this SMTP address.
    pub send_as: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    /// Recipients of the envelope that no header names.
    pub bcc: Vec<String>,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
    /// (file name, bytes), in order.
    pub attachments: Vec<(String, Vec<u8>)>,
}

/// Outlook as the relay's outbox: sends a mail from one of the profile's accounts. Lives on the
/// thread that opened it, as [`Folder`] does.
pub trait Outbox {
    fn describe(&self) -> String;
    /// The profile's accounts' SMTP addresses.
    fn accounts(&mut self) -> Result<Vec<String>, Error>;
    /// Sends `mail`; what Outlook said (it gives no server reply: the mail goes to its Outbox
    /// and from there to the account's server).
    fn send(&mut self, mail: &Outgoing) -> Result<String, Error>;
}

/// A file name Windows takes for attachment `i` named `name` in a mail: no path, none of
/// `<>:"/\|?*` or control characters, no trailing dot or space, not a reserved device name;
/// `attachment-{i}` when nothing is left.
pub fn windows_file_name(name: &str, i: usize) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .map(|c| {
            if c.is_control() || "<>:\"/\\|?*".contains(c) {
                '_'
            } else {
                c
            }
        })
        .collect();
    let cleaned = cleaned.trim_end_matches(['.', ' ']).trim_start();
    let stem = cleaned.split('.').next().unwrap_or("").to_ascii_uppercase();
    let reserved = matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || (stem.len() == 4
            && (stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.as_bytes()[3].is_ascii_digit());
    if cleaned.is_empty() {
        format!("attachment-{i}")
    } else if reserved {
        format!("_{cleaned}")
    } else {
        cleaned.to_owned()
    }
}

/// Which folder the relay reads, as the config names it:
/// - `Inbox` or `Inbox/Exports/Dialer`: the profile's default inbox (whatever its name in
///   Outlook's language), then subfolders by name;
/// - `\\ops@branch.example\Inbox\Exports`: a store by its display name, then folders by name,
///   as Outlook's `Folder.FolderPath` shows it (for a shared or secondary mailbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderPath {
    /// The store's display name; `None` for the default inbox.
    pub store: Option<String>,
    /// Folder names below the store (or below the default inbox).
    pub folders: Vec<String>,
}

impl FolderPath {
    pub fn parse(text: &str) -> Result<FolderPath, Error> {
        let text = text.trim();
        let names = |rest: &str, sep: &[char]| -> Result<Vec<String>, Error> {
            rest.split(sep)
                .map(|n| {
                    let n = n.trim();
                    if n.is_empty() {
                        Err(Error::new(format!(
                            "the Outlook folder {text:?} has an empty folder name"
                        )))
                    } else {
                        Ok(n.to_owned())
                    }
                })
                .collect()
        };
        if let Some(rest) = text.strip_prefix("\\\\") {
            let mut parts = names(rest, &['\\'])?.into_iter();
            let store = parts.next().expect("split gives one part at least");
            return Ok(FolderPath {
                store: Some(store),
                folders: parts.collect(),
            });
        }
        let mut parts = names(text, &['/', '\\'])?.into_iter();
        match parts.next() {
            Some(first) if first.eq_ignore_ascii_case("inbox") => Ok(FolderPath {
                store: None,
                folders: parts.collect(),
            }),
            _ => Err(Error::new(format!(
                "the Outlook folder {text:?} must start with Inbox (the profile's default inbox, e.g. Inbox/Exports) or be a full path such as \\\\ops@branch.example\\Inbox\\Exports, as Outlook's folder properties show it"
            ))),
        }
    }
}

impl fmt::Display for FolderPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.store {
            Some(store) => {
                write!(f, "\\\\{store}")?;
                for n in &self.folders {
                    write!(f, "\\{n}")?;
                }
                Ok(())
            }
            None => {
                f.write_str("Inbox")?;
                for n in &self.folders {
                    write!(f, "/{n}")?;
                }
                Ok(())
            }
        }
    }
}

/// What went wrong, in words (with COM's HRESULT when there was one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub message: String,
    pub hresult: Option<i32>,
    /// Trying again will not help (a sender the profile has no account for, a recipient that
    /// does not resolve); otherwise Outlook may answer next time (closed, busy, restarting).
    pub permanent: bool,
}

impl Error {
    pub fn new(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
            hresult: None,
            permanent: false,
        }
    }

    /// An error trying again will not mend.
    pub fn permanent(message: impl Into<String>) -> Error {
        Error {
            permanent: true,
            ..Error::new(message)
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.hresult {
            Some(hr) => write!(f, "{} (HRESULT 0x{:08X})", self.message, hr as u32),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Error {}

/// Opens `path` in the running Outlook profile (starting Outlook when it is not running). The
/// folder lives on the calling thread, which COM joins to its multithreaded apartment.
#[cfg(windows)]
pub fn open(path: &FolderPath) -> Result<Box<dyn Folder>, Error> {
    com::open(path)
}

/// Reaches the running Outlook (starting it when it is not running) to send mail.
#[cfg(windows)]
pub fn open_outbox() -> Result<Box<dyn Outbox>, Error> {
    com::open_outbox()
}

/// Outlook sends only on Windows: on any other platform, opening it says so.
#[cfg(not(windows))]
pub fn open_outbox() -> Result<Box<dyn Outbox>, Error> {
    Err(Error::permanent(format!(
        "sending through Outlook runs only on Windows, with Outlook installed; this charlie-relay is built for {}: use [outbox] via = \"smtp\" here",
        std::env::consts::OS
    )))
}

/// Outlook is a Windows source: on any other platform, opening it says so.
#[cfg(not(windows))]
pub fn open(path: &FolderPath) -> Result<Box<dyn Folder>, Error> {
    Err(Error::new(format!(
        "the Outlook source (folder {path}) runs only on Windows, with Outlook installed; this charlie-relay is built for {}: use kind = \"imap\" or \"folder\" here",
        std::env::consts::OS
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_path_is_the_default_inbox_or_a_store_and_its_folders() {
        let p = FolderPath::parse("Inbox/Exports/Dialer").unwrap();
        assert_eq!(p.store, None);
        assert_eq!(p.folders, ["Exports", "Dialer"]);
        assert_eq!(p.to_string(), "Inbox/Exports/Dialer");
        assert_eq!(FolderPath::parse(" inbox ").unwrap().folders.len(), 0);
        assert_eq!(
            FolderPath::parse("Inbox\\Exports").unwrap().folders,
            ["Exports"]
        );
        let p = FolderPath::parse("\\\\ops@branch.example\\Inbox\\Exports").unwrap();
        assert_eq!(p.store.as_deref(), Some("ops@branch.example"));
        assert_eq!(p.folders, ["Inbox", "Exports"]);
        assert_eq!(p.to_string(), "\\\\ops@branch.example\\Inbox\\Exports");
        // A store alone is a path too (its top folder).
        assert!(FolderPath::parse("\\\\Archive").unwrap().folders.is_empty());
        for bad in [
            "Exports/Dialer",
            "",
            "Inbox//Dialer",
            "\\\\",
            "\\\\ops\\\\Inbox",
        ] {
            let e = FolderPath::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("must start with Inbox") || e.contains("empty folder name"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn an_attachment_name_becomes_a_file_name_windows_takes() {
        assert_eq!(
            windows_file_name("calls_2024-03-14.xlsx", 0),
            "calls_2024-03-14.xlsx"
        );
        assert_eq!(
            windows_file_name("Zürich: \"daily\"?.xlsx", 1),
            "Zürich_ _daily__.xlsx"
        );
        assert_eq!(windows_file_name("..\\..\\evil.bat", 2), "evil.bat");
        assert_eq!(windows_file_name("/etc/passwd", 3), "passwd");
        assert_eq!(windows_file_name("report. . ", 4), "report");
        assert_eq!(windows_file_name("con.xlsx", 5), "_con.xlsx");
        assert_eq!(windows_file_name("COM1", 6), "_COM1");
        assert_eq!(windows_file_name("COMPANY.xlsx", 7), "COMPANY.xlsx");
        assert_eq!(windows_file_name("", 8), "attachment-8");
        assert_eq!(windows_file_name("...", 9), "attachment-9");
    }

    #[test]
    fn an_error_shows_its_hresult_in_hex() {
        let e = Error {
            message: "Outlook is not installed".into(),
            hresult: Some(0x800401F3_u32 as i32),
            permanent: false,
        };
        assert_eq!(
            e.to_string(),
            "Outlook is not installed (HRESULT 0x800401F3)"
        );
    }

    /// Run on Windows without Outlook (`scripts/test` runs it under Wine): COM starts, and the
    /// missing Outlook is said with its HRESULT (CO_E_CLASSSTRING). On a machine with Outlook
    /// this would reach it: run there with `CHARLIE_OUTLOOK_INSTALLED=1` to skip it.
    #[cfg(windows)]
    #[test]
    fn without_outlook_opening_it_says_outlook_is_not_installed() {
        if std::env::var_os("CHARLIE_OUTLOOK_INSTALLED").is_some() {
            return;
        }
        let e = open(&FolderPath::parse("Inbox/Exports").unwrap())
            .err()
            .expect("no Outlook here");
        assert_eq!(e.hresult, Some(0x800401F3_u32 as i32), "{e}");
        assert!(e.message.contains("Outlook is not installed"), "{e}");
    }

    #[cfg(not(windows))]
    #[test]
    fn elsewhere_opening_outlook_says_it_is_a_windows_source() {
        let e = open(&FolderPath::parse("Inbox").unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("only on Windows") && e.contains("imap"), "{e}");
    }
}

//! WINDOWS ONLY, NOT RUN HERE: the folder through Outlook's object model, late bound through
//! `IDispatch` as a script drives Outlook (no type library, so any Outlook from 2010 on).
//! `scripts/test` type-checks and lints it for `x86_64-pc-windows-gnu`; no machine of this
//! project has Windows or Outlook, so it has never run. It only reads properties and saves
//! attachments to a private temporary folder: it never changes, moves or marks an item.
//!
//! Outlook's object-model guard may ask the desktop user to allow access to addresses and
//! bodies (or refuse it) when no up-to-date antivirus is registered: see docs/relay.md.

use std::path::PathBuf;

use windows::Win32::System::Com::{
    CLSCTX_LOCAL_SERVER, CLSIDFromProgID, COINIT_MULTITHREADED, CoCreateInstance, CoInitializeEx,
    CoUninitialize, DISPATCH_FLAGS, DISPATCH_METHOD, DISPATCH_PROPERTYGET, DISPATCH_PROPERTYPUT,
    DISPATCH_PROPERTYPUTREF, DISPPARAMS, EXCEPINFO, IDispatch,
};
use windows::Win32::System::Ole::DISPID_PROPERTYPUT;
use windows::Win32::System::Variant::{
    VAR_CHANGE_FLAGS, VARENUM, VARIANT, VT_BOOL, VT_BSTR, VT_R8, VariantChangeType,
};
use windows::core::{GUID, HSTRING, PCWSTR};

use crate::{
    Attachment, Content, Error, Folder, FolderPath, Item, Listed, MAX_DEPTH, Outbox, Outgoing,
    windows_file_name,
};

/// `OlDefaultFolders.olFolderInbox`.
const OL_FOLDER_INBOX: i32 = 6;
/// `OlObjectClass.olMail`: a mail item (not a meeting request, report or post).
const OL_MAIL: i32 = 43;
/// `OlAttachmentType`: by value (a file), an attached Outlook item.
const OL_BY_VALUE: i32 = 1;
const OL_EMBEDDED_ITEM: i32 = 5;
const PR_TRANSPORT_MESSAGE_HEADERS: &str = "http://schemas.microsoft.com/mapi/proptag/0x007D001F";
const PR_INTERNET_MESSAGE_ID: &str = "http://schemas.microsoft.com/mapi/proptag/0x1035001F";
const PR_SENDER_SMTP_ADDRESS: &str = "http://schemas.microsoft.com/mapi/proptag/0x5D01001F";
const LOCALE_USER_DEFAULT: u32 = 0x0400;

fn com_error(what: impl Into<String>, e: &windows::core::Error) -> Error {
    let said = e.message();
    Error {
        message: if said.trim().is_empty() {
            what.into()
        } else {
            format!("{}: {}", what.into(), said.trim())
        },
        hresult: Some(e.code().0),
        permanent: false,
    }
}

/// One automation object.
struct Object(IDispatch);

impl Object {
    fn invoke(
        &self,
        name: &str,
        flags: DISPATCH_FLAGS,
        args: &[VARIANT],
    ) -> Result<VARIANT, Error> {
        let wide = HSTRING::from(name);
        let names = [PCWSTR(wide.as_ptr())];
        let mut id = 0i32;
        // SAFETY: one name in, one DISPID out, both living across the call.
        unsafe {
            self.0.GetIDsOfNames(
                &GUID::zeroed(),
                names.as_ptr(),
                1,
                LOCALE_USER_DEFAULT,
                &mut id,
            )
        }
        .map_err(|e| com_error(format!("Outlook's object has no {name}"), &e))?;
        // IDispatch takes the arguments last first.
        let mut reversed: Vec<VARIANT> = args.iter().rev().cloned().collect();
        // A property put names its value, as IDispatch requires.
        let mut named = [DISPID_PROPERTYPUT];
        let put = flags == DISPATCH_PROPERTYPUT || flags == DISPATCH_PROPERTYPUTREF;
        let params = DISPPARAMS {
            rgvarg: reversed.as_mut_ptr(),
            rgdispidNamedArgs: if put {
                named.as_mut_ptr()
            } else {
                std::ptr::null_mut()
            },
            cArgs: u32::try_from(reversed.len()).expect("a handful of arguments"),
            cNamedArgs: u32::from(put),
        };
        let mut result = VARIANT::default();
        let mut exception = EXCEPINFO::default();
        // SAFETY: the arguments, result and exception outlive the call; COM owns nothing of
        // ours after it returns.
        let called = unsafe {
            self.0.Invoke(
                id,
                &GUID::zeroed(),
                LOCALE_USER_DEFAULT,
                flags,
                &params,
                Some(&mut result),
                Some(&mut exception),
                None,
            )
        };
        // SAFETY: the strings the call filled in (or left empty), ours to free, taken once.
        let (description, _, _) = unsafe {
            (
                std::mem::ManuallyDrop::take(&mut exception.bstrDescription),
                std::mem::ManuallyDrop::take(&mut exception.bstrSource),
                std::mem::ManuallyDrop::take(&mut exception.bstrHelpFile),
            )
        };
        let description = description.to_string();
        called.map_err(|e| {
            let what = if description.is_empty() {
                format!("Outlook's {name}")
            } else {
                format!("Outlook's {name}: {description}")
            };
            com_error(what, &e)
        })?;
        Ok(result)
    }

    /// A property, or a method called with `args` (Outlook's collections take both forms).
    fn call(&self, name: &str, args: &[VARIANT]) -> Result<VARIANT, Error> {
        self.invoke(name, DISPATCH_METHOD | DISPATCH_PROPERTYGET, args)
    }

    fn get(&self, name: &str) -> Result<VARIANT, Error> {
        self.call(name, &[])
    }

    fn put(&self, name: &str, value: VARIANT) -> Result<(), Error> {
        self.invoke(name, DISPATCH_PROPERTYPUT, &[value]).map(drop)
    }

    /// An object-valued property set (`Set item.SendUsingAccount = account`).
    fn put_ref(&self, name: &str, value: &Object) -> Result<(), Error> {
        self.invoke(
            name,
            DISPATCH_PROPERTYPUTREF,
            &[VARIANT::from(value.0.clone())],
        )
        .map(drop)
    }

    fn object(&self, name: &str, args: &[VARIANT]) -> Result<Object, Error> {
        let v = self.call(name, args)?;
        IDispatch::try_from(&v)
            .map(Object)
            .map_err(|e| com_error(format!("Outlook's {name} is not an object"), &e))
    }

    fn string(&self, name: &str) -> Result<String, Error> {
        Ok(text(&self.get(name)?))
    }

    fn int(&self, name: &str) -> Result<i32, Error> {
        let n = number(&self.get(name)?, name, "a number")?;
        #[expect(
            clippy::cast_possible_truncation,
            reason = "Outlook's counts and codes are 32-bit"
        )]
        Ok(n as i32)
    }
}

/// `v` converted to `vt` by oleaut32's VariantChangeType (the automation way, on every Windows
/// and in Wine; propsys' VariantTo* helpers are not in Wine).
fn changed(v: &VARIANT, vt: VARENUM) -> windows::core::Result<VARIANT> {
    let mut out = VARIANT::default();
    // SAFETY: both variants are valid; `out` owns what the call puts in it.
    unsafe { VariantChangeType(&mut out, v, VAR_CHANGE_FLAGS(0), vt) }?;
    Ok(out)
}

/// A value as text (an empty or null value is "").
fn text(v: &VARIANT) -> String {
    match changed(v, VT_BSTR) {
        // SAFETY: a VT_BSTR variant holds a BSTR.
        Ok(c) => unsafe { c.Anonymous.Anonymous.Anonymous.bstrVal.to_string() },
        Err(_) => String::new(),
    }
}

fn number(v: &VARIANT, name: &str, what: &str) -> Result<f64, Error> {
    let c =
        changed(v, VT_R8).map_err(|e| com_error(format!("Outlook's {name} is not {what}"), &e))?;
    // SAFETY: a VT_R8 variant holds an f64.
    Ok(unsafe { c.Anonymous.Anonymous.Anonymous.dblVal })
}

fn boolean(v: &VARIANT) -> bool {
    match changed(v, VT_BOOL) {
        // SAFETY: a VT_BOOL variant holds a VARIANT_BOOL.
        Ok(c) => unsafe { c.Anonymous.Anonymous.Anonymous.boolVal }.as_bool(),
        Err(_) => false,
    }
}

/// A DATE as its OLE automation serial (days since 1899-12-30).
fn date(v: &VARIANT, name: &str) -> Result<f64, Error> {
    number(v, name, "a date")
}

/// COM joined for this thread, left when the folder goes (after the objects it holds).
struct Apartment;

impl Apartment {
    fn join() -> Result<Apartment, Error> {
        // SAFETY: paired with CoUninitialize in Drop, on the same thread (the folder never
        // leaves the thread that opened it: it is not Send).
        unsafe { CoInitializeEx(None, COINIT_MULTITHREADED) }
            .ok()
            .map_err(|e| com_error("starting COM", &e))?;
        Ok(Apartment)
    }
}

impl Drop for Apartment {
    fn drop(&mut self) {
        // SAFETY: this thread joined in `join`.
        unsafe { CoUninitialize() }
    }
}

/// A private folder for files on their way to or from Outlook (removed when done).
fn scratch(what: &str) -> Result<PathBuf, Error> {
    let dir = std::env::temp_dir().join(format!(
        "charlie-relay-outlook-{what}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::new(format!("creating {}: {e}", dir.display())))?;
    Ok(dir)
}

struct OutlookFolder {
    // Dropped in this order: the objects, then the apartment.
    namespace: Object,
    folder: Object,
    store_id: String,
    path: String,
    /// Where attachments are saved to be read (and removed at once).
    scratch: PathBuf,
    _apartment: Apartment,
}

/// Outlook.Application: the running Outlook, or started.
fn application() -> Result<Object, Error> {
    // SAFETY: a string in, a CLSID out.
    let clsid = unsafe { CLSIDFromProgID(&HSTRING::from("Outlook.Application")) }.map_err(|e| {
        com_error(
            "Outlook is not installed for this user (Outlook.Application is not registered)",
            &e,
        )
    })?;
    // SAFETY: Outlook is one process per desktop session: this reaches the running one, or
    // starts it.
    let app: IDispatch =
        unsafe { CoCreateInstance(&clsid, None, CLSCTX_LOCAL_SERVER) }.map_err(|e| {
            com_error(
                "reaching Outlook (is it running in this user's session?)",
                &e,
            )
        })?;
    Ok(Object(app))
}

pub fn open(path: &FolderPath) -> Result<Box<dyn Folder>, Error> {
    let apartment = Apartment::join()?;
    attach(apartment, application()?, path)
}

/// The folder `path` of the Outlook `app` (the running Outlook, or the tests' fake of its
/// object model).
fn attach(apartment: Apartment, app: Object, path: &FolderPath) -> Result<Box<dyn Folder>, Error> {
    let namespace = app.object("GetNamespace", &[VARIANT::from("MAPI")])?;
    let mut folder = match &path.store {
        None => namespace.object("GetDefaultFolder", &[VARIANT::from(OL_FOLDER_INBOX)])?,
        Some(store) => namespace
            .object("Folders", &[])?
            .object("Item", &[VARIANT::from(store.as_str())])
            .map_err(|e| Error::new(format!("no store {store:?} in this Outlook profile: {e}")))?,
    };
    for name in &path.folders {
        folder = folder
            .object("Folders", &[])?
            .object("Item", &[VARIANT::from(name.as_str())])
            .map_err(|e| Error::new(format!("no folder {name:?} in {path}: {e}")))?;
    }
    let store_id = folder.string("StoreID")?;
    let full = folder.string("FolderPath")?;
    let scratch = scratch("source")?;
    Ok(Box::new(OutlookFolder {
        namespace,
        folder,
        store_id,
        path: full,
        scratch,
        _apartment: apartment,
    }))
}

impl OutlookFolder {
    fn read(&self, item: &Object, depth: usize) -> Result<Item, Error> {
        let accessor = item.object("PropertyAccessor", &[])?;
        // A property the item does not have is an error from GetProperty: none.
        let property = |tag: &str| {
            accessor
                .call("GetProperty", &[VARIANT::from(tag)])
                .ok()
                .map(|v| text(&v))
                .filter(|s| !s.is_empty())
        };
        let received = item.get("ReceivedTime")?;
        let received_utc = match accessor.call("LocalTimeToUTC", &[received]) {
            Ok(v) => Some(date(&v, "ReceivedTime")?),
            Err(_) => None,
        };
        let sender_address = match property(PR_SENDER_SMTP_ADDRESS) {
            Some(a) => a,
            None => item.string("SenderEmailAddress")?,
        };
        let mut read = Item {
            entry_id: item.string("EntryID").unwrap_or_default(),
            internet_headers: property(PR_TRANSPORT_MESSAGE_HEADERS),
            message_id: property(PR_INTERNET_MESSAGE_ID),
            sender_name: item.string("SenderName")?,
            sender_address,
            subject: item.string("Subject")?,
            received_utc,
            body: item.string("Body")?,
            attachments: Vec::new(),
            skipped: Vec::new(),
        };
        let attachments = item.object("Attachments", &[])?;
        let count = attachments.int("Count")?;
        for i in 1..=count {
            let a = attachments.object("Item", &[VARIANT::from(i)])?;
            let name = a.string("FileName").unwrap_or_default();
            let kind = a.int("Type")?;
            if kind != OL_BY_VALUE && kind != OL_EMBEDDED_ITEM {
                read.skipped.push(format!(
                    "attachment {i} ({name:?}) is a link or an OLE object (type {kind}), not a file: not sent"
                ));
                continue;
            }
            let file = self.scratch.join(format!("attachment-{depth}-{i}.bin"));
            a.call(
                "SaveAsFile",
                &[VARIANT::from(file.to_string_lossy().as_ref())],
            )?;
            let bytes = std::fs::read(&file);
            let content = if kind == OL_EMBEDDED_ITEM && depth + 1 < MAX_DEPTH {
                // An attached item: opened from its .msg and read as an item of its own.
                let msg = self.scratch.join(format!("attachment-{depth}-{i}.msg"));
                std::fs::rename(&file, &msg)
                    .map_err(|e| Error::new(format!("keeping {}: {e}", msg.display())))?;
                let opened = self
                    .namespace
                    .object(
                        "OpenSharedItem",
                        &[VARIANT::from(msg.to_string_lossy().as_ref())],
                    )
                    .and_then(|inner| self.read(&inner, depth + 1));
                let content = match opened {
                    Ok(inner) => Content::Item(Box::new(inner)),
                    Err(_) => Content::Msg(
                        std::fs::read(&msg)
                            .map_err(|e| Error::new(format!("reading {}: {e}", msg.display())))?,
                    ),
                };
                let _ = std::fs::remove_file(&msg);
                content
            } else {
                let _ = std::fs::remove_file(&file);
                let bytes =
                    bytes.map_err(|e| Error::new(format!("reading {}: {e}", file.display())))?;
                if kind == OL_EMBEDDED_ITEM {
                    Content::Msg(bytes)
                } else {
                    Content::File(bytes)
                }
            };
            read.attachments.push(Attachment { name, content });
        }
        Ok(read)
    }
}

impl Folder for OutlookFolder {
    fn describe(&self) -> String {
        self.path.clone()
    }

    fn count(&mut self) -> Result<usize, Error> {
        let n = self.folder.object("Items", &[])?.int("Count")?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn list(&mut self, not_before: Option<f64>) -> Result<Vec<Listed>, Error> {
        let items = self.folder.object("Items", &[])?;
        items.call(
            "Sort",
            &[VARIANT::from("[ReceivedTime]"), VARIANT::from(true)],
        )?;
        let count = items.int("Count")?;
        let mut listed = Vec::new();
        for i in 1..=count {
            let item = items.object("Item", &[VARIANT::from(i)])?;
            if item.int("Class")? != OL_MAIL {
                continue;
            }
            let received = date(&item.get("ReceivedTime")?, "ReceivedTime")?;
            if not_before.is_some_and(|n| received < n) {
                break;
            }
            listed.push(Listed {
                entry_id: item.string("EntryID")?,
                received,
            });
        }
        Ok(listed)
    }

    fn item(&mut self, entry_id: &str) -> Result<Item, Error> {
        let item = self.namespace.object(
            "GetItemFromID",
            &[
                VARIANT::from(entry_id),
                VARIANT::from(self.store_id.as_str()),
            ],
        )?;
        self.read(&item, 0)
    }
}

impl Drop for OutlookFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// `OlItemType.olMailItem`.
const OL_MAIL_ITEM: i32 = 0;
/// `OlMailRecipientType`.
const OL_TO: i32 = 1;
const OL_CC: i32 = 2;
const OL_BCC: i32 = 3;

struct OutlookOutbox {
    app: Object,
    namespace: Object,
    scratch: PathBuf,
    _apartment: Apartment,
}

pub fn open_outbox() -> Result<Box<dyn Outbox>, Error> {
    let apartment = Apartment::join()?;
    attach_outbox(apartment, application()?)
}

fn attach_outbox(apartment: Apartment, app: Object) -> Result<Box<dyn Outbox>, Error> {
    let namespace = app.object("GetNamespace", &[VARIANT::from("MAPI")])?;
    Ok(Box::new(OutlookOutbox {
        app,
        namespace,
        scratch: scratch("outbox")?,
        _apartment: apartment,
    }))
}

impl OutlookOutbox {
    fn account(&self, address: &str) -> Result<Option<Object>, Error> {
        let accounts = self.namespace.object("Accounts", &[])?;
        for i in 1..=accounts.int("Count")? {
            let a = accounts.object("Item", &[VARIANT::from(i)])?;
            if a.string("SmtpAddress")?.eq_ignore_ascii_case(address) {
                return Ok(Some(a));
            }
        }
        Ok(None)
    }
}

impl Outbox for OutlookOutbox {
    fn describe(&self) -> String {
        let profile = self
            .namespace
            .string("CurrentProfileName")
            .unwrap_or_default();
        format!("outlook profile {profile:?}")
    }

    fn accounts(&mut self) -> Result<Vec<String>, Error> {
        let accounts = self.namespace.object("Accounts", &[])?;
        (1..=accounts.int("Count")?)
            .map(|i| {
                accounts
                    .object("Item", &[VARIANT::from(i)])?
                    .string("SmtpAddress")
            })
            .collect()
    }

    fn send(&mut self, mail: &Outgoing) -> Result<String, Error> {
        // The account first: a sender the profile cannot send as makes nothing.
        let Some(account) = self.account(&mail.send_as)? else {
            let known = self.accounts()?.join(", ");
            return Err(Error::permanent(format!(
                "this Outlook profile has no account {}: the report's send_as must be one of: {known}",
                mail.send_as
            )));
        };
        let item = self
            .app
            .object("CreateItem", &[VARIANT::from(OL_MAIL_ITEM)])?;
        let recipients = item.object("Recipients", &[])?;
        for (list, kind) in [(&mail.to, OL_TO), (&mail.cc, OL_CC), (&mail.bcc, OL_BCC)] {
            for address in list {
                recipients
                    .object("Add", &[VARIANT::from(address.as_str())])?
                    .put("Type", VARIANT::from(kind))?;
            }
        }
        if !boolean(&recipients.get("ResolveAll")?) {
            return Err(Error::permanent(
                "Outlook cannot resolve a recipient of the mail (ResolveAll answered false)",
            ));
        }
        item.put("Subject", VARIANT::from(mail.subject.as_str()))?;
        match (&mail.html, &mail.text) {
            (Some(html), _) => item.put("HTMLBody", VARIANT::from(html.as_str()))?,
            (None, Some(text)) => item.put("Body", VARIANT::from(text.as_str()))?,
            (None, None) => {}
        }
        // Each file under its own name (Outlook names the attachment after the file), in a
        // folder of its own; Outlook copies it into the item at Add.
        let attachments = item.object("Attachments", &[])?;
        for (i, (name, bytes)) in mail.attachments.iter().enumerate() {
            let dir = self.scratch.join(i.to_string());
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::new(format!("creating {}: {e}", dir.display())))?;
            let file = dir.join(windows_file_name(name, i));
            std::fs::write(&file, bytes)
                .map_err(|e| Error::new(format!("writing {}: {e}", file.display())))?;
            let added = attachments.call("Add", &[VARIANT::from(file.to_string_lossy().as_ref())]);
            // Removed whatever Add said: Outlook has its copy, or there is none to keep.
            let _ = std::fs::remove_file(&file);
            added?;
        }
        item.put_ref("SendUsingAccount", &account)?;
        item.call("Send", &[])?;
        Ok(format!(
            "given to Outlook to send from {} ({} recipient(s))",
            mail.send_as,
            mail.to.len() + mail.cc.len() + mail.bcc.len()
        ))
    }
}

impl Drop for OutlookOutbox {
    fn drop(&mut self) {
        // A leftover temporary folder is harmless, and there is no one to tell.
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

#[cfg(test)]
mod tests;

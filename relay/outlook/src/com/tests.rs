//! The COM code against a fake of Outlook's object model, in process (run under Wine by
//! `scripts/test`). The fake follows the documented members the code uses, with Outlook's
//! awkward parts: `PropertyAccessor.GetProperty` raises an error for a property the item does
//! not have, collections are 1-based and answer `Item(i)` as method or property, `ReceivedTime`
//! is a local-time DATE (`LocalTimeToUTC` converts), an Exchange sender's `SenderEmailAddress`
//! is an X.500 DN, an attached item is saved as a `.msg` and read back with `OpenSharedItem`.

use std::cell::Cell;
use std::rc::Rc;

use windows::Win32::Foundation::{
    DISP_E_EXCEPTION, DISP_E_MEMBERNOTFOUND, DISP_E_PARAMNOTFOUND, DISP_E_UNKNOWNNAME, E_NOTIMPL,
};
use windows::Win32::System::Com::{
    DISPATCH_FLAGS, DISPPARAMS, EXCEPINFO, IDispatch, IDispatch_Impl, ITypeInfo,
};
use windows::Win32::System::Variant::{VARIANT, VT_DATE};
use windows::core::{BSTR, GUID, PCWSTR, implement};

use super::*;

type Method = Box<dyn Fn(&[VARIANT]) -> Result<VARIANT, String>>;

#[implement(IDispatch)]
struct Fake {
    members: Vec<(&'static str, Method)>,
}

impl IDispatch_Impl for Fake_Impl {
    fn GetTypeInfoCount(&self) -> windows::core::Result<u32> {
        Ok(0)
    }

    fn GetTypeInfo(&self, _: u32, _: u32) -> windows::core::Result<ITypeInfo> {
        Err(E_NOTIMPL.into())
    }

    fn GetIDsOfNames(
        &self,
        _: *const GUID,
        names: *const PCWSTR,
        count: u32,
        _: u32,
        ids: *mut i32,
    ) -> windows::core::Result<()> {
        for i in 0..count as usize {
            // SAFETY: the caller passes `count` names and room for `count` ids.
            let name = unsafe { (*names.add(i)).to_string() }?;
            let id = self
                .members
                .iter()
                .position(|(n, _)| n.eq_ignore_ascii_case(&name))
                .ok_or(windows::core::Error::from(DISP_E_UNKNOWNNAME))?;
            // SAFETY: as above.
            unsafe { *ids.add(i) = i32::try_from(id).unwrap() };
        }
        Ok(())
    }

    fn Invoke(
        &self,
        id: i32,
        _: *const GUID,
        _: u32,
        flags: DISPATCH_FLAGS,
        params: *const DISPPARAMS,
        result: *mut VARIANT,
        exception: *mut EXCEPINFO,
        _: *mut u32,
    ) -> windows::core::Result<()> {
        // As an automation object does: a property put names its value DISPID_PROPERTYPUT.
        if flags.0 & (DISPATCH_PROPERTYPUT.0 | DISPATCH_PROPERTYPUTREF.0) != 0 {
            // SAFETY: the caller's parameters.
            let named = unsafe {
                let p = &*params;
                (p.cNamedArgs == 1).then(|| *p.rgdispidNamedArgs)
            };
            if named != Some(DISPID_PROPERTYPUT) {
                return Err(DISP_E_PARAMNOTFOUND.into());
            }
        }
        // SAFETY: the caller's parameters, arguments last first.
        let args: Vec<VARIANT> = unsafe {
            let p = &*params;
            (0..p.cArgs as usize)
                .rev()
                .map(|i| (*p.rgvarg.add(i)).clone())
                .collect()
        };
        let (_, method) = usize::try_from(id)
            .ok()
            .and_then(|i| self.members.get(i))
            .ok_or(windows::core::Error::from(DISP_E_MEMBERNOTFOUND))?;
        match method(&args) {
            Ok(v) => {
                if !result.is_null() {
                    // SAFETY: the caller's result, empty until now.
                    unsafe { *result = v };
                }
                Ok(())
            }
            Err(description) => {
                if !exception.is_null() {
                    // SAFETY: the caller's exception record.
                    unsafe {
                        (*exception).bstrDescription =
                            std::mem::ManuallyDrop::new(BSTR::from(description));
                    };
                }
                Err(DISP_E_EXCEPTION.into())
            }
        }
    }
}

fn object(members: Vec<(&'static str, Method)>) -> VARIANT {
    let d: IDispatch = Fake { members }.into();
    VARIANT::from(d)
}

fn value(v: impl Fn() -> VARIANT + 'static) -> Method {
    Box::new(move |_| Ok(v()))
}

fn date(days: f64) -> VARIANT {
    let mut v = VARIANT::from(days);
    // SAFETY: a DATE is an f64, as the R8 the variant holds.
    unsafe { (*v.Anonymous.Anonymous).vt = VT_DATE };
    v
}

fn int_arg(v: &VARIANT) -> i32 {
    #[expect(clippy::cast_possible_truncation, reason = "small test numbers")]
    let n = number(v, "argument", "a number").unwrap() as i32;
    n
}

fn arg_text(args: &[VARIANT], i: usize) -> String {
    text(&args[i])
}

#[derive(Clone)]
enum FakeAttachment {
    File(&'static str, Vec<u8>),
    Item(&'static str, Rc<Mail>),
    Link(&'static str),
}

struct Mail {
    entry_id: &'static str,
    class: i32,
    received: f64,
    headers: Option<&'static str>,
    message_id: Option<&'static str>,
    smtp: Option<&'static str>,
    sender_email: &'static str,
    subject: &'static str,
    attachments: Vec<FakeAttachment>,
}

/// Local time is UTC+1 on the fake's machine.
const LOCAL_OFFSET: f64 = 1.0 / 24.0;

fn mail_object(mail: &Rc<Mail>) -> VARIANT {
    let m = Rc::clone(mail);
    let accessor = move || {
        let m = Rc::clone(&m);
        object(vec![
            (
                "GetProperty",
                Box::new(move |args| {
                    let tag = arg_text(args, 0);
                    let found = match tag.rsplit('/').next().unwrap_or("") {
                        "0x007D001F" => m.headers,
                        "0x1035001F" => m.message_id,
                        "0x5D01001F" => m.smtp,
                        _ => None,
                    };
                    found.map(VARIANT::from).ok_or_else(|| {
                        format!("The property \"{tag}\" is unknown or cannot be found.")
                    })
                }),
            ),
            (
                "LocalTimeToUTC",
                Box::new(|args| {
                    Ok(date(
                        number(&args[0], "Value", "a date").unwrap() - LOCAL_OFFSET,
                    ))
                }),
            ),
        ])
    };
    let m = Rc::clone(mail);
    let attachments = move || {
        let list = m.attachments.clone();
        let count = list.len();
        object(vec![
            (
                "Count",
                value(move || VARIANT::from(i32::try_from(count).unwrap())),
            ),
            (
                "Item",
                Box::new(move |args| {
                    let i = usize::try_from(int_arg(&args[0])).unwrap();
                    let a = list
                        .get(i.wrapping_sub(1))
                        .cloned()
                        .ok_or("Array index out of bounds.")?;
                    let (name, kind) = match &a {
                        FakeAttachment::File(n, _) => (*n, 1),
                        FakeAttachment::Item(n, _) => (*n, 5),
                        FakeAttachment::Link(n) => (*n, 4),
                    };
                    Ok(object(vec![
                        ("FileName", value(move || VARIANT::from(name))),
                        ("Type", value(move || VARIANT::from(kind))),
                        (
                            "SaveAsFile",
                            Box::new(move |args| {
                                let bytes = match &a {
                                    FakeAttachment::File(_, b) => b.clone(),
                                    FakeAttachment::Item(_, inner) => {
                                        format!("MSG {}", inner.entry_id).into_bytes()
                                    }
                                    FakeAttachment::Link(_) => {
                                        return Err("Outlook cannot do this action on this type of attachment.".into());
                                    }
                                };
                                std::fs::write(arg_text(args, 0), bytes)
                                    .map_err(|e| e.to_string())?;
                                Ok(VARIANT::default())
                            }),
                        ),
                    ]))
                }),
            ),
        ])
    };
    let (entry_id, class, received, sender, subject) = (
        mail.entry_id,
        mail.class,
        mail.received,
        mail.sender_email,
        mail.subject,
    );
    object(vec![
        ("Class", value(move || VARIANT::from(class))),
        ("EntryID", value(move || VARIANT::from(entry_id))),
        ("ReceivedTime", value(move || date(received))),
        ("SenderName", value(|| VARIANT::from("Dialer Exports"))),
        ("SenderEmailAddress", value(move || VARIANT::from(sender))),
        ("Subject", value(move || VARIANT::from(subject))),
        ("Body", value(|| VARIANT::from("Today's export.\r\n"))),
        ("PropertyAccessor", value(accessor)),
        ("Attachments", value(attachments)),
    ])
}

/// Outlook with one store, `ops@branch.example`, whose inbox has a folder `Exports`.
fn outlook(mails: Vec<Rc<Mail>>) -> Object {
    let all: Rc<Vec<Rc<Mail>>> = Rc::new(mails);
    let inner_of = {
        let all = Rc::clone(&all);
        move |id: &str| -> Option<Rc<Mail>> {
            all.iter()
                .flat_map(|m| m.attachments.iter())
                .find_map(|a| match a {
                    FakeAttachment::Item(_, inner) if inner.entry_id == id => {
                        Some(Rc::clone(inner))
                    }
                    _ => None,
                })
        }
    };
    let folder_mails = Rc::clone(&all);
    let items = move || {
        let mails = Rc::clone(&folder_mails);
        let descending = Rc::new(Cell::new(None::<bool>));
        let sorted = Rc::clone(&descending);
        let count = mails.len();
        object(vec![
            (
                "Sort",
                Box::new(move |args| {
                    assert_eq!(arg_text(args, 0), "[ReceivedTime]");
                    // SAFETY: Sort's second argument is a VT_BOOL.
                    sorted.set(Some(
                        unsafe { args[1].Anonymous.Anonymous.Anonymous.boolVal }.as_bool(),
                    ));
                    Ok(VARIANT::default())
                }),
            ),
            (
                "Count",
                value(move || VARIANT::from(i32::try_from(count).unwrap())),
            ),
            (
                "Item",
                Box::new(move |args| {
                    let mut order: Vec<Rc<Mail>> = mails.iter().cloned().collect();
                    match descending.get() {
                        Some(true) => order.sort_by(|a, b| b.received.total_cmp(&a.received)),
                        Some(false) => order.sort_by(|a, b| a.received.total_cmp(&b.received)),
                        None => {}
                    }
                    let i = usize::try_from(int_arg(&args[0])).unwrap();
                    let m = order
                        .get(i.wrapping_sub(1))
                        .ok_or("Array index out of bounds.")?;
                    Ok(mail_object(m))
                }),
            ),
        ])
    };
    let exports = move || {
        let items = items.clone();
        object(vec![
            ("Items", Box::new(move |_| Ok(items()))),
            ("StoreID", value(|| VARIANT::from("0000STORE01"))),
            (
                "FolderPath",
                value(|| VARIANT::from("\\\\ops@branch.example\\Inbox\\Exports")),
            ),
        ])
    };
    let inbox = move || {
        let exports = exports.clone();
        object(vec![
            (
                "Folders",
                Box::new(move |_| {
                    let exports = exports.clone();
                    Ok(object(vec![(
                        "Item",
                        Box::new(move |args| match arg_text(args, 0).as_str() {
                            "Exports" => Ok(exports()),
                            _ => Err(
                                "The attempted operation failed.  An object could not be found."
                                    .into(),
                            ),
                        }),
                    )]))
                }),
            ),
            ("StoreID", value(|| VARIANT::from("0000STORE01"))),
            (
                "FolderPath",
                value(|| VARIANT::from("\\\\ops@branch.example\\Inbox")),
            ),
        ])
    };
    let by_id = Rc::clone(&all);
    let namespace = move || {
        let inbox = inbox.clone();
        let by_id = Rc::clone(&by_id);
        let inner_of = inner_of.clone();
        object(vec![
            (
                "GetDefaultFolder",
                Box::new(move |args| {
                    assert_eq!(int_arg(&args[0]), 6, "olFolderInbox");
                    Ok(inbox())
                }),
            ),
            (
                "GetItemFromID",
                Box::new(move |args| {
                    assert_eq!(arg_text(args, 1), "0000STORE01", "the folder's store");
                    let id = arg_text(args, 0);
                    by_id
                        .iter()
                        .find(|m| m.entry_id == id)
                        .map(mail_object)
                        .ok_or_else(|| "The operation failed. An object could not be found.".into())
                }),
            ),
            (
                "OpenSharedItem",
                Box::new(move |args| {
                    let saved =
                        std::fs::read_to_string(arg_text(args, 0)).map_err(|e| e.to_string())?;
                    let id = saved.strip_prefix("MSG ").ok_or("not a .msg file")?;
                    inner_of(id)
                        .map(|m| mail_object(&m))
                        .ok_or_else(|| "cannot open the file".into())
                }),
            ),
        ])
    };
    let app = object(vec![(
        "GetNamespace",
        Box::new(move |args| {
            assert_eq!(arg_text(args, 0), "MAPI");
            Ok(namespace())
        }),
    )]);
    Object(IDispatch::try_from(&app).unwrap())
}

const HEADERS: &str = "Received: from mx.dialer.example; Thu, 14 Mar 2024 09:58:01 +0000\r\nFrom: exports@dialer.example\r\nMessage-ID: <m1@dialer.example>\r\n\r\n";

fn mails() -> Vec<Rc<Mail>> {
    let inner = Rc::new(Mail {
        entry_id: "00INNER",
        class: 43,
        received: 45_365.3,
        headers: None,
        message_id: Some("<inner@dialer.example>"),
        smtp: Some("exports@dialer.example"),
        sender_email: "exports@dialer.example",
        subject: "the export",
        attachments: vec![FakeAttachment::File(
            "ib_calls.csv",
            b"a,b\r\n1,2\r\n".to_vec(),
        )],
    });
    vec![
        Rc::new(Mail {
            entry_id: "00E1",
            class: 43,
            received: 45_365.41,
            headers: Some(HEADERS),
            message_id: Some("<m1@dialer.example>"),
            smtp: Some("exports@dialer.example"),
            sender_email: "exports@dialer.example",
            subject: "IB calls export",
            attachments: vec![
                FakeAttachment::File(
                    "ib_calls_2024-03-14.csv",
                    b"call_id,agent\r\n1,ann\r\n".to_vec(),
                ),
                FakeAttachment::Link("\\\\share\\exports\\big.csv"),
                FakeAttachment::Item("FW the export.msg", inner),
            ],
        }),
        Rc::new(Mail {
            entry_id: "00R1",
            class: 46, // a delivery report: not mail
            received: 45_365.45,
            headers: None,
            message_id: None,
            smtp: None,
            sender_email: "",
            subject: "Undeliverable",
            attachments: vec![],
        }),
        Rc::new(Mail {
            entry_id: "00E2",
            class: 43,
            received: 45_365.5,
            headers: None,
            message_id: None,
            smtp: None,
            sender_email: "/O=BRANCH/OU=EXCHANGE ADMINISTRATIVE GROUP/CN=RECIPIENTS/CN=OPS",
            subject: "internal",
            attachments: vec![],
        }),
    ]
}

#[test]
fn the_folder_is_found_listed_and_read_through_outlooks_object_model() {
    let apartment = Apartment::join().unwrap();
    let app = outlook(mails());
    let mut folder = attach(apartment, app, &FolderPath::parse("Inbox/Exports").unwrap()).unwrap();
    assert_eq!(folder.describe(), "\\\\ops@branch.example\\Inbox\\Exports");
    assert_eq!(folder.count().unwrap(), 3);
    let listed = folder.list(None).unwrap();
    assert_eq!(
        listed,
        [
            Listed {
                entry_id: "00E2".into(),
                received: 45_365.5
            },
            Listed {
                entry_id: "00E1".into(),
                received: 45_365.41
            },
        ],
        "mail items only, newest first"
    );
    let listed = folder.list(Some(45_365.45)).unwrap();
    assert_eq!(listed.len(), 1, "stops at the first older than not_before");

    let item = folder.item("00E1").unwrap();
    assert_eq!(item.internet_headers.as_deref(), Some(HEADERS));
    assert_eq!(item.message_id.as_deref(), Some("<m1@dialer.example>"));
    assert_eq!(item.sender_address, "exports@dialer.example");
    assert_eq!(item.sender_name, "Dialer Exports");
    let utc = item.received_utc.unwrap();
    assert!((utc - (45_365.41 - LOCAL_OFFSET)).abs() < 1e-9, "{utc}");
    assert_eq!(item.attachments.len(), 2, "{:?}", item.attachments);
    assert_eq!(item.attachments[0].name, "ib_calls_2024-03-14.csv");
    assert_eq!(
        item.attachments[0].content,
        Content::File(b"call_id,agent\r\n1,ann\r\n".to_vec())
    );
    let Content::Item(inner) = &item.attachments[1].content else {
        panic!("{:?}", item.attachments[1]);
    };
    assert_eq!(inner.message_id.as_deref(), Some("<inner@dialer.example>"));
    assert_eq!(
        inner.internet_headers, None,
        "a missing property is none, not an error"
    );
    assert_eq!(
        inner.attachments[0].content,
        Content::File(b"a,b\r\n1,2\r\n".to_vec())
    );
    assert_eq!(item.skipped.len(), 1);
    assert!(
        item.skipped[0].contains("big.csv") && item.skipped[0].contains("type 4"),
        "{:?}",
        item.skipped
    );

    // An Exchange sender without PR_SENDER_SMTP_ADDRESS: its DN, which the relay does not take
    // for an address.
    let item = folder.item("00E2").unwrap();
    assert!(item.sender_address.starts_with("/O=BRANCH"));
    assert_eq!(item.message_id, None);

    // Outlook's own words when something is not there.
    let e = folder.item("00GONE").err().unwrap();
    assert!(
        e.message.contains("GetItemFromID") && e.message.contains("could not be found"),
        "{e}"
    );
    assert_eq!(e.hresult, Some(DISP_E_EXCEPTION.0));
    drop(folder);
    let e = attach(
        Apartment::join().unwrap(),
        outlook(mails()),
        &FolderPath::parse("Inbox/Dialer").unwrap(),
    )
    .err()
    .unwrap();
    assert!(e.message.contains("no folder \"Dialer\""), "{e}");
}

/// What the fake Outlook was given to send.
#[derive(Debug, Clone, Default, PartialEq)]
struct Sent {
    recipients: Vec<(String, i32)>,
    subject: String,
    html: Option<String>,
    body: Option<String>,
    attachments: Vec<(String, Vec<u8>)>,
    account: String,
}

fn settable(slot: Rc<std::cell::RefCell<Sent>>, set: fn(&mut Sent, String)) -> Method {
    Box::new(move |args| {
        set(&mut slot.borrow_mut(), arg_text(args, 0));
        Ok(VARIANT::default())
    })
}

/// Outlook with two accounts, recording what each `Send` sent.
fn outlook_outbox(log: Rc<std::cell::RefCell<Vec<Sent>>>) -> Object {
    const ACCOUNTS: [&str; 2] = ["reports@branch.example", "ops@branch.example"];
    let namespace = || {
        object(vec![
            (
                "Accounts",
                Box::new(|_| {
                    Ok(object(vec![
                        ("Count", value(|| VARIANT::from(2))),
                        (
                            "Item",
                            Box::new(|args| {
                                let address =
                                    ACCOUNTS[usize::try_from(int_arg(&args[0]) - 1).unwrap()];
                                Ok(object(vec![(
                                    "SmtpAddress",
                                    value(move || VARIANT::from(address)),
                                )]))
                            }),
                        ),
                    ]))
                }),
            ),
            ("CurrentProfileName", value(|| VARIANT::from("Outlook"))),
        ])
    };
    let create = move |args: &[VARIANT]| -> Result<VARIANT, String> {
        assert_eq!(int_arg(&args[0]), 0, "olMailItem");
        let item = Rc::new(std::cell::RefCell::new(Sent::default()));
        let log = Rc::clone(&log);
        let (r, a, u, s) = (
            Rc::clone(&item),
            Rc::clone(&item),
            Rc::clone(&item),
            Rc::clone(&item),
        );
        Ok(object(vec![
            (
                "Recipients",
                Box::new(move |_| {
                    let r = Rc::clone(&r);
                    let all = Rc::clone(&r);
                    Ok(object(vec![
                        (
                            "Add",
                            Box::new(move |args| {
                                let address = arg_text(args, 0);
                                let r = Rc::clone(&r);
                                Ok(object(vec![(
                                    "Type",
                                    Box::new(move |args| {
                                        r.borrow_mut()
                                            .recipients
                                            .push((address.clone(), int_arg(&args[0])));
                                        Ok(VARIANT::default())
                                    }),
                                )]))
                            }),
                        ),
                        (
                            "ResolveAll",
                            Box::new(move |_| {
                                Ok(VARIANT::from(
                                    all.borrow().recipients.iter().all(|(a, _)| a.contains('@')),
                                ))
                            }),
                        ),
                    ]))
                }),
            ),
            ("Subject", settable(Rc::clone(&item), |m, v| m.subject = v)),
            (
                "HTMLBody",
                settable(Rc::clone(&item), |m, v| m.html = Some(v)),
            ),
            ("Body", settable(Rc::clone(&item), |m, v| m.body = Some(v))),
            (
                "Attachments",
                Box::new(move |_| {
                    let a = Rc::clone(&a);
                    Ok(object(vec![(
                        "Add",
                        Box::new(move |args| {
                            let path = std::path::PathBuf::from(arg_text(args, 0));
                            let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
                            let name = path.file_name().unwrap().to_string_lossy().into_owned();
                            a.borrow_mut().attachments.push((name, bytes));
                            Ok(VARIANT::default())
                        }),
                    )]))
                }),
            ),
            (
                "SendUsingAccount",
                Box::new(move |args| {
                    let account = Object(IDispatch::try_from(&args[0]).map_err(|e| e.to_string())?);
                    u.borrow_mut().account =
                        account.string("SmtpAddress").map_err(|e| e.to_string())?;
                    Ok(VARIANT::default())
                }),
            ),
            (
                "Send",
                Box::new(move |_| {
                    log.borrow_mut().push(s.borrow().clone());
                    Ok(VARIANT::default())
                }),
            ),
        ]))
    };
    let app = object(vec![
        ("GetNamespace", Box::new(move |_| Ok(namespace()))),
        ("CreateItem", Box::new(create)),
    ]);
    Object(IDispatch::try_from(&app).unwrap())
}

#[test]
fn a_mail_is_sent_through_outlooks_object_model_from_the_account_named() {
    let log = Rc::new(std::cell::RefCell::new(Vec::new()));
    let mut outbox =
        attach_outbox(Apartment::join().unwrap(), outlook_outbox(Rc::clone(&log))).unwrap();
    assert_eq!(outbox.describe(), "outlook profile \"Outlook\"");
    assert_eq!(
        outbox.accounts().unwrap(),
        ["reports@branch.example", "ops@branch.example"]
    );
    let mail = Outgoing {
        send_as: "Reports@Branch.example".into(),
        to: vec!["lead@branch.example".into()],
        cc: vec!["ops@branch.example".into()],
        bcc: vec!["audit@branch.example".into()],
        subject: "Branch calls — 2024-03-14".into(),
        text: Some("The report is attached.".into()),
        html: Some("<p>The report is attached.</p>".into()),
        attachments: vec![(
            "branch: calls 2024-03-14.xlsx".into(),
            b"PK\x03\x04 workbook".to_vec(),
        )],
    };
    let said = outbox.send(&mail).unwrap();
    assert!(
        said.contains("Reports@Branch.example") && said.contains("3 recipient(s)"),
        "{said}"
    );
    let sent = log.borrow()[0].clone();
    assert_eq!(
        sent,
        Sent {
            recipients: vec![
                ("lead@branch.example".into(), 1),
                ("ops@branch.example".into(), 2),
                ("audit@branch.example".into(), 3)
            ],
            subject: "Branch calls — 2024-03-14".into(),
            html: Some("<p>The report is attached.</p>".into()),
            body: None,
            attachments: vec![(
                "branch_ calls 2024-03-14.xlsx".into(),
                b"PK\x03\x04 workbook".to_vec()
            )],
            account: "reports@branch.example".into(),
        }
    );
    // A sender the profile has no account for: refused for good, nothing made.
    let e = outbox
        .send(&Outgoing {
            send_as: "nobody@branch.example".into(),
            ..mail.clone()
        })
        .unwrap_err();
    assert!(e.permanent, "{e}");
    assert!(
        e.message.contains("no account nobody@branch.example")
            && e.message.contains("ops@branch.example"),
        "{e}"
    );
    // A recipient Outlook cannot resolve: refused for good, not sent.
    let e = outbox
        .send(&Outgoing {
            to: vec!["Lead Agent".into()],
            ..mail.clone()
        })
        .unwrap_err();
    assert!(e.permanent && e.message.contains("resolve"), "{e}");
    assert_eq!(log.borrow().len(), 1, "only the good mail was sent");
    // Text only: the plain body.
    outbox
        .send(&Outgoing {
            html: None,
            attachments: vec![],
            ..mail
        })
        .unwrap();
    assert_eq!(
        log.borrow()[1].body.as_deref(),
        Some("The report is attached.")
    );
    assert_eq!(log.borrow()[1].html, None);
}

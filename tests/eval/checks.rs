//! The eval checks on hand-made outputs: each check kind passing and failing, and every case
//! of the shipped suite (suites/basic.jsonl) against a right and a wrong answer written here.

use std::path::Path;

use edgetune::eval::checks::first_failure;
use edgetune::eval::{Check, load_suite};

#[test]
fn check_kinds_on_hand_made_outputs() {
    let contains = Check::new("contains", "21").unwrap();
    assert!(contains.passes(" 21, 34, 55"));
    assert!(!contains.passes(" 20, 34"));
    let not = Check::new("not_contains", "9.11").unwrap();
    assert!(not.passes("9.9"));
    assert!(!not.passes("9.11 is larger"));
    let eq = Check::new("equals", "9.9").unwrap();
    assert!(eq.passes("\n 9.9 \n"));
    assert!(!eq.passes("9.90"));
    assert!(!eq.passes("It is 9.9"));
    let re = Check::new("regex", r"(?i)^\s*yes\b").unwrap();
    assert!(re.passes("  YES, it is"));
    assert!(!re.passes("yesterday"));
    // Case-sensitive substring by default.
    assert!(!Check::new("contains", "Yes").unwrap().passes("yes"));

    let checks = [contains.clone(), not.clone()];
    assert!(first_failure(&checks, "21").is_none());
    assert_eq!(first_failure(&checks, "9.11").unwrap().kind(), "contains");
    assert_eq!(
        first_failure(&checks, "21 9.11").unwrap().kind(),
        "not_contains"
    );
}

/// (case id, a right answer, a wrong answer), written by hand.
const ANSWERS: &[(&str, &str, &str)] = &[
    ("fib-en", " 21, 34", " 20, 33"),
    ("fib-id", "21", "Deretnya berlanjut: 22"),
    ("fib-plain", " 21, 34, 55", " 1, 2, 3"),
    ("larger-9_11-vs-9_9-en", "9.9", "9.11"),
    ("larger-9_11-vs-9_9-id", "9,9", "9.11"),
    (
        "larger-9_8-vs-9_11-en",
        "**9.8**",
        "9.11 is larger than 9.8",
    ),
    ("larger-9_8-vs-9_11-id", "Jawabannya 9,8.", "9,11"),
    ("larger-3_14-vs-3_141-en", "3.141", "3.14"),
    ("larger-3_14-vs-3_141-id", "3,141", "3,14"),
    ("larger-0_5-vs-0_45-en", "0.5", "0.45"),
    ("larger-0_5-vs-0_45-id", "0,5", "0,45"),
    ("larger-2_10-vs-2_9-en", "2.9", "2.10"),
    ("larger-2_10-vs-2_9-id", "2.9", "2,10"),
    ("larger-1_05-vs-1_5-en", "1.5", "1.05"),
    ("larger-1_05-vs-1_5-id", "1,5", "1.05"),
    ("smaller-0_7-vs-0_65-en", "0.65", "0.7"),
    ("smaller-0_7-vs-0_65-id", "0,65", "0,7"),
    ("larger-9_11-vs-9_9-id-comma", "9,9", "9,11"),
];

#[test]
fn shipped_suite_passes_right_answers_and_fails_wrong_ones() {
    let suite = load_suite(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/suites/basic.jsonl"
    )))
    .unwrap();
    assert!(suite.cases.len() >= 12);
    assert_eq!(
        suite.cases.len(),
        ANSWERS.len(),
        "every case has hand-written answers"
    );
    for case in &suite.cases {
        let (_, right, wrong) = ANSWERS
            .iter()
            .find(|(id, _, _)| *id == case.id)
            .unwrap_or_else(|| panic!("no answers for {}", case.id));
        assert!(
            first_failure(&case.checks, right).is_none(),
            "{}: {right:?} should pass",
            case.id
        );
        assert!(
            first_failure(&case.checks, wrong).is_some(),
            "{}: {wrong:?} should fail",
            case.id
        );
        // Echoing the question back is not an answer.
        if case.id.starts_with("larger") || case.id.starts_with("smaller") {
            assert!(
                first_failure(&case.checks, &case.input).is_some(),
                "{}",
                case.id
            );
        }
    }
    let langs: Vec<_> = suite
        .cases
        .iter()
        .filter_map(|c| c.lang.as_deref())
        .collect();
    assert!(langs.contains(&"en") && langs.contains(&"id"));
    assert!(
        suite
            .cases
            .iter()
            .any(|c| c.input.contains("Which is larger, 9.11 or 9.9?"))
    );
    assert!(
        suite
            .cases
            .iter()
            .any(|c| c.input.contains("Mana yang lebih besar, 9.11 atau 9.9?"))
    );
}

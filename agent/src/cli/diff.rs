//! A unified line diff (`diff -u` style) for `agent promote --dry-run`: the
//! longest common subsequence of lines, shown with three lines of context.
use std::fmt::Write;

/// Lines of context around each change.
const CONTEXT: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Keep,
    Delete,
    Insert,
}

/// `--- name` / `+++ name` and `@@` hunks; empty when the texts are equal.
pub fn unified(name: &str, before: &str, after: &str) -> String {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    let ops = edit_script(&a, &b);
    if ops.iter().all(|(op, _, _)| *op == Op::Keep) {
        return String::new();
    }
    let mut out = format!("--- {name}\n+++ {name} (promoted)\n");
    let changed: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].0 != Op::Keep).collect();
    let mut i = 0;
    while i < changed.len() {
        // A hunk: changes closer than 2 * CONTEXT lines apart stay together.
        let start = changed[i].saturating_sub(CONTEXT);
        let mut end = changed[i];
        while i + 1 < changed.len() && changed[i + 1] <= end + 2 * CONTEXT + 1 {
            i += 1;
            end = changed[i];
        }
        let end = (end + CONTEXT + 1).min(ops.len());
        let hunk = &ops[start..end];
        let lines_without = |op: Op| hunk.iter().filter(|(o, _, _)| *o != op).count();
        let _ = writeln!(
            out,
            "@@ -{},{} +{},{} @@",
            hunk[0].1 + 1,
            lines_without(Op::Insert),
            hunk[0].2 + 1,
            lines_without(Op::Delete)
        );
        for &(op, ai, bi) in hunk {
            let _ = match op {
                Op::Keep => writeln!(out, " {}", a[ai]),
                Op::Delete => writeln!(out, "-{}", a[ai]),
                Op::Insert => writeln!(out, "+{}", b[bi]),
            };
        }
        i += 1;
    }
    out
}

/// The edit script with, per step, the line index in `a` and in `b` it is at.
/// Quadratic in lines: policy files are small.
fn edit_script(a: &[&str], b: &[&str]) -> Vec<(Op, usize, usize)> {
    // lcs[i][j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut ops) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((Op::Keep, i, j));
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push((Op::Delete, i, j));
            i += 1;
        } else {
            ops.push((Op::Insert, i, j));
            j += 1;
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_line_shows_with_its_context() {
        let before = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let after = "a\nb\nc\nD\ne\nf\ng\nh\n";
        assert_eq!(
            unified("x.yaml", before, after),
            "--- x.yaml\n+++ x.yaml (promoted)\n@@ -1,7 +1,7 @@\n a\n b\n c\n-d\n+D\n e\n f\n g\n"
        );
        assert_eq!(unified("x", before, before), "");
    }

    #[test]
    fn a_deleted_document_is_one_hunk() {
        let before = "k: 1\n---\nkind: X\nname: y\n---\nk: 2\n";
        let after = "k: 1\n---\nk: 2\n";
        let d = unified("f", before, after);
        assert!(d.contains("@@ -1,6 +1,3 @@\n"), "{d}");
        assert_eq!(d.lines().filter(|l| l.starts_with('-')).count(), 4, "{d}");
    }
}

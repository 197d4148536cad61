package storekeeper_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/constant"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestErrorsWrapTheirCause: no production source formats an error value
// into a new error as text, where errors.Is and errors.As cannot see it:
//   - fmt.Errorf with a verb other than %w (%v, %s, %q, ...) for an
//     operand whose static type implements error;
//   - errors.New of a string made from an error (its Error method, or
//     fmt.Sprint* of it).
//
// Each such site must use %w (one Errorf may have several): the message
// stays the same and the cause stays reachable. Strings meant only for
// people (warnings, notes, findings) are not errors and are not checked.
//
// The packages are type-checked from source with the standard library
// alone, their imports read from the export data `go list -export`
// writes, so the check knows the types (an errno, errors.Join(...), a
// struct field) rather than guessing from names.
func TestErrorsWrapTheirCause(t *testing.T) {
	pkgs := listPackages(t)
	fset := token.NewFileSet()
	exports := map[string]string{}
	for _, p := range pkgs {
		exports[p.ImportPath] = p.Export
	}
	imp := importer.ForCompiler(fset, "gc", func(path string) (io.ReadCloser, error) {
		f, ok := exports[path]
		if !ok || f == "" {
			return nil, fmt.Errorf("no export data for %s", path)
		}
		return os.Open(f)
	})
	var bad []string
	checked := 0
	for _, p := range pkgs {
		if p.Standard || p.DepOnly {
			continue
		}
		var files []*ast.File
		for _, name := range p.GoFiles {
			f, err := parser.ParseFile(fset, filepath.Join(p.Dir, name), nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			files = append(files, f)
		}
		info := &types.Info{Types: map[ast.Expr]types.TypeAndValue{}, Uses: map[*ast.Ident]types.Object{}}
		conf := types.Config{Importer: imp}
		if _, err := conf.Check(p.ImportPath, fset, files, info); err != nil {
			t.Fatalf("type-checking %s: %v", p.ImportPath, err)
		}
		n, b := uncaused(fset, info, files)
		checked += n
		bad = append(bad, b...)
	}
	if checked < 100 {
		t.Fatalf("only %d fmt.Errorf/errors.New calls found: the check is not reading the sources", checked)
	}
	if len(bad) > 0 {
		t.Fatalf("%d errors lose their cause (use %%w, as often as needed, so errors.Is/As see it):\n%s", len(bad), strings.Join(bad, "\n"))
	}
}

// uncaused returns how many fmt.Errorf and errors.New calls files hold
// and those that turn an error into text.
func uncaused(fset *token.FileSet, info *types.Info, files []*ast.File) (checked int, bad []string) {
	wd, _ := os.Getwd()
	at := func(n ast.Node) string {
		p := fset.Position(n.Pos())
		if rel, err := filepath.Rel(wd, p.Filename); err == nil && !strings.HasPrefix(rel, "..") {
			p.Filename = rel
		}
		return p.String()
	}
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			switch funcName(info, call) {
			case "fmt.Errorf":
				checked++
				for _, m := range textualErrors(info, call) {
					bad = append(bad, fmt.Sprintf("%s: fmt.Errorf formats %s", at(call), m))
				}
			case "errors.New":
				checked++
				if m := errorMadeText(info, call.Args[0]); m != "" {
					bad = append(bad, fmt.Sprintf("%s: errors.New of %s", at(call), m))
				}
			}
			return true
		})
	}
	return checked, bad
}

type goPackage struct {
	ImportPath string
	Dir        string
	GoFiles    []string
	Export     string
	Standard   bool
	DepOnly    bool
}

// listPackages runs go list -export -deps on the module: its packages
// (with their production files) and, for every dependency, the export
// data the type checker imports.
func listPackages(t *testing.T) []goPackage {
	t.Helper()
	cmd := exec.Command("go", "list", "-export", "-deps", "-json=ImportPath,Dir,GoFiles,Export,Standard,DepOnly", "./...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	var pkgs []goPackage
	for dec := json.NewDecoder(bytes.NewReader(out)); ; {
		var p goPackage
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// funcName is "pkg.Func" for a call of a package-level function.
func funcName(info *types.Info, call *ast.CallExpr) string {
	sel, ok := call.Fun.(*ast.SelectorExpr)
	if !ok {
		return ""
	}
	fn, ok := info.Uses[sel.Sel].(*types.Func)
	if !ok || fn.Pkg() == nil || fn.Type().(*types.Signature).Recv() != nil {
		return ""
	}
	return fn.Pkg().Path() + "." + fn.Name()
}

var errorType = types.Universe.Lookup("error").Type().Underlying().(*types.Interface)

func isError(info *types.Info, e ast.Expr) bool {
	t := info.Types[e].Type
	return t != nil && types.Implements(t, errorType)
}

// textualErrors lists the error operands of an fmt.Errorf call that a verb
// other than %w formats.
func textualErrors(info *types.Info, call *ast.CallExpr) []string {
	tv := info.Types[call.Args[0]]
	if tv.Value == nil || tv.Value.Kind() != constant.String {
		return nil // a format made at run time: not checked
	}
	args := call.Args[1:]
	var out []string
	for i, verb := range formatVerbs(constant.StringVal(tv.Value)) {
		if i < len(args) && verb != 0 && verb != 'w' && isError(info, args[i]) {
			out = append(out, fmt.Sprintf("the error %s with %%%c", types.ExprString(args[i]), verb))
		}
	}
	return out
}

// formatVerbs returns, for each operand of a format (in order), the verb
// that formats it (0 for an operand a '*' width or precision consumes).
// Explicit argument indexes ("%[2]v") are honoured.
func formatVerbs(format string) []rune {
	var verbs []rune
	arg := 0
	set := func(v rune) {
		for len(verbs) <= arg {
			verbs = append(verbs, 0)
		}
		verbs[arg] = v
		arg++
	}
	index := func(i int) int { // parses "[n]" at format[i:], sets arg
		if i < len(format) && format[i] == '[' {
			if j := strings.IndexByte(format[i:], ']'); j > 0 {
				if n, err := strconv.Atoi(format[i+1 : i+j]); err == nil && n > 0 {
					arg = n - 1
				}
				return i + j + 1
			}
		}
		return i
	}
	for i := 0; i < len(format); i++ {
		if format[i] != '%' {
			continue
		}
		i++
		for i < len(format) && strings.IndexByte("+-# 0", format[i]) >= 0 {
			i++
		}
		i = index(i)
		if i < len(format) && format[i] == '*' {
			set(0)
			i++
		}
		for i < len(format) && format[i] >= '0' && format[i] <= '9' {
			i++
		}
		if i < len(format) && format[i] == '.' {
			i++
			i = index(i)
			if i < len(format) && format[i] == '*' {
				set(0)
				i++
			}
			for i < len(format) && format[i] >= '0' && format[i] <= '9' {
				i++
			}
		}
		i = index(i)
		if i >= len(format) {
			break
		}
		if format[i] == '%' {
			continue
		}
		set(rune(format[i]))
	}
	return verbs
}

// errorMadeText reports an error turned into text inside e: a call of its
// Error method, or an error operand of fmt.Sprint, Sprintf or Sprintln.
func errorMadeText(info *types.Info, e ast.Expr) string {
	found := ""
	ast.Inspect(e, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok || found != "" {
			return found == ""
		}
		if sel, ok := call.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "Error" && len(call.Args) == 0 && isError(info, sel.X) {
			found = types.ExprString(call)
			return false
		}
		switch funcName(info, call) {
		case "fmt.Sprint", "fmt.Sprintf", "fmt.Sprintln":
			for _, a := range call.Args {
				if isError(info, a) {
					found = "a string made from the error " + types.ExprString(a)
					return false
				}
			}
		}
		return true
	})
	return found
}

// TestFormatVerbs pins the format parser the check above relies on.
func TestFormatVerbs(t *testing.T) {
	for _, c := range []struct {
		format string
		want   string
	}{
		{"%w: %s: %v", "wsv"},
		{"100%% %d%%: %q", "dq"},
		{"%-*d %.*f %x", "\x00d\x00fx"},
		{"%[2]v %[1]w", "wv"},
		{"%+v %#v % x %08.3f", "vvxf"},
		{"no verbs", ""},
		{"trailing %", ""},
	} {
		if got := string(formatVerbs(c.format)); got != c.want {
			t.Errorf("formatVerbs(%q) = %q, want %q", c.format, got, c.want)
		}
	}
}

// TestUncausedFindsEachForm: the check flags every form it is meant to and
// nothing that keeps the cause or formats no error.
func TestUncausedFindsEachForm(t *testing.T) {
	const src = `package p

import (
	"errors"
	"fmt"
	"syscall"
)

var ErrX = errors.New("x")

type result struct{ err error }

func f(err error, errno syscall.Errno, r result, errs []error, path string, n int) []error {
	return []error{
		fmt.Errorf("%w: taking %s: %v", ErrX, path, err),          // bad: err
		fmt.Errorf("%w: io_uring_setup: %v", ErrX, errno),         // bad: errno
		fmt.Errorf("%w: %s", ErrX, r.err),                         // bad: r.err
		fmt.Errorf("%w: %v (nothing)", ErrX, errors.Join(errs...)), // bad: Join
		fmt.Errorf("no: %q", err),                                 // bad: err
		fmt.Errorf("%[2]v: %[1]w", ErrX, err),                     // bad: err
		errors.New("failed: " + err.Error()),                      // bad
		errors.New(fmt.Sprintf("failed: %v", err)),                // bad
		fmt.Errorf("%w: taking %s: %w", ErrX, path, err),          // good
		fmt.Errorf("%w: %s has %d: %v", ErrX, path, n, n),         // good: no error formatted
		fmt.Errorf("%w: %s", ErrX, err.Error()),                   // good: a string, chosen
		errors.New("plain"),                                       // good
	}
}
`
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "p.go", src, 0)
	if err != nil {
		t.Fatal(err)
	}
	info := &types.Info{Types: map[ast.Expr]types.TypeAndValue{}, Uses: map[*ast.Ident]types.Object{}}
	conf := types.Config{Importer: importer.ForCompiler(fset, "source", nil)}
	if _, err := conf.Check("p", fset, []*ast.File{f}, info); err != nil {
		t.Fatal(err)
	}
	checked, bad := uncaused(fset, info, []*ast.File{f})
	var lines []int
	for _, b := range bad {
		// "p.go:LINE:COL: ..."
		n, _ := strconv.Atoi(strings.Split(b, ":")[1])
		lines = append(lines, n)
	}
	if want := []int{15, 16, 17, 18, 19, 20, 21, 22}; checked != 13 || fmt.Sprint(lines) != fmt.Sprint(want) {
		t.Fatalf("checked %d calls (want 13), flagged lines %v (want %v):\n%s", checked, lines, want, strings.Join(bad, "\n"))
	}
}

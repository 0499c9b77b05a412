// Command gopher-health runs an Argo CD resource health script the way Argo CD does: in
// gopher-lua (Lua 5.1), with only the base, table, string and math libraries opened and the
// object, read as JSON from stdin, as the global `obj`.
//
// Usage: gopher-health SCRIPT < object.json
// Prints the health status and message on two lines.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	lua "github.com/yuin/gopher-lua"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gopher-health SCRIPT < object.json")
		os.Exit(2)
	}
	var obj any
	if err := json.NewDecoder(os.Stdin).Decode(&obj); err != nil {
		fmt.Fprintln(os.Stderr, "the object is not JSON:", err)
		os.Exit(2)
	}
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	// The libraries Argo CD opens for health scripts, and no others (no io, no os).
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.StringLibName, lua.OpenString},
		{lua.MathLibName, lua.OpenMath},
	} {
		l.Push(l.NewFunction(lib.open))
		l.Push(lua.LString(lib.name))
		l.Call(1, 0)
	}
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoFile(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	hs, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		fmt.Fprintf(os.Stderr, "the health script returned %s, not a table\n", l.Get(-1).Type())
		os.Exit(3)
	}
	fmt.Printf("%s\n%s\n", lua.LVAsString(hs.RawGetString("status")), lua.LVAsString(hs.RawGetString("message")))
}

// toLua turns decoded JSON into Lua values as Argo CD does: objects and arrays become tables,
// null becomes nil (an absent field).
func toLua(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case []any:
		t := l.NewTable()
		for _, item := range v {
			t.Append(toLua(l, item))
		}
		return t
	case map[string]any:
		t := l.NewTable()
		for key, item := range v {
			t.RawSetString(key, toLua(l, item))
		}
		return t
	default:
		panic(fmt.Sprintf("unexpected JSON value %T", value))
	}
}

module imagebuild.dev/tests/lua/gopher

go 1.24

require github.com/yuin/gopher-lua v1.1.1

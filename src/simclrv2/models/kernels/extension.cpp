// The extension's second translation unit: the bindings and every kernel but bn_relu.cpp, compiled as one.
//
// Each translation unit parses the ATen headers again, ~5.5 s of a first build on a 2-core machine whatever the file
// holds (sum.cpp alone took 6.0 s, bn_relu.cpp 23.8). Seven units took 41 s of wall time on 2 cores; bn_relu.cpp and
// this one, compiled side by side, 29 s. The files stay separate to read; their
// helpers live in anonymous namespaces, which this unit merges, so a name two of them define is a compile error here.
#include "module.cpp"
#include "layout.cpp"
#include "sum.cpp"
#include "sk_mix.cpp"
#include "direct_conv.cpp"
#include "stem_conv.cpp"
#include "winograd_conv.cpp"
#include "winograd_weights.cpp"

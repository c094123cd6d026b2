// The CUDA source Slang generates for one compute entry point, with the Slang compiler that slangpy
// itself loads (its libslang-compiler and slang.h), for tests/test_cuda_codegen.py: the CUDA-only
// kernels can then be compiled by nvcc (no GPU needed) as slangpy would hand them to NVRTC.
//
//   slang_to_cuda <slang folder> <file.slang> <entry> <out.cu> [NAME=VALUE ...]
//
// Exit status 0 and the source in <out.cu>, or 1 with Slang's diagnostics on stderr.
#include <cstdio>
#include <string>
#include <vector>

#include "slang.h"

namespace {

int fail(const char* what, slang::IBlob* diagnostics)
{
    std::fprintf(stderr, "slang_to_cuda: %s\n", what);
    if (diagnostics)
        std::fprintf(stderr, "%s\n", (const char*)diagnostics->getBufferPointer());
    return 1;
}

}  // namespace

int main(int argc, char** argv)
{
    if (argc < 5)
        return fail("usage: slang_to_cuda <slang folder> <file.slang> <entry> <out.cu> [NAME=VALUE ...]", nullptr);
    std::vector<std::string> names, values;
    for (int i = 5; i < argc; i++)
    {
        std::string define = argv[i];
        size_t equals = define.find('=');
        names.push_back(define.substr(0, equals));
        values.push_back(equals == std::string::npos ? "1" : define.substr(equals + 1));
    }
    std::vector<slang::PreprocessorMacroDesc> macros;
    for (size_t i = 0; i < names.size(); i++)
        macros.push_back({names[i].c_str(), values[i].c_str()});

    slang::IGlobalSession* global = nullptr;
    if (SLANG_FAILED(slang_createGlobalSession(SLANG_API_VERSION, &global)))
        return fail("cannot create a Slang global session", nullptr);
    slang::TargetDesc target;
    target.format = SLANG_CUDA_SOURCE;
    const char* search[] = {argv[1]};
    slang::SessionDesc desc;
    desc.targets = &target;
    desc.targetCount = 1;
    desc.searchPaths = search;
    desc.searchPathCount = 1;
    desc.preprocessorMacros = macros.data();
    desc.preprocessorMacroCount = (SlangInt)macros.size();
    slang::ISession* session = nullptr;
    if (SLANG_FAILED(global->createSession(desc, &session)))
        return fail("cannot create a Slang session", nullptr);

    slang::IBlob* diagnostics = nullptr;
    std::string module_name = argv[2];
    if (module_name.size() > 6 && module_name.substr(module_name.size() - 6) == ".slang")
        module_name.resize(module_name.size() - 6);
    slang::IModule* module = session->loadModule(module_name.c_str(), &diagnostics);
    if (!module)
        return fail("the module does not compile", diagnostics);
    slang::IEntryPoint* entry = nullptr;
    if (SLANG_FAILED(module->findEntryPointByName(argv[3], &entry)))
        return fail("no such entry point", nullptr);
    slang::IComponentType* parts[] = {module, entry};
    slang::IComponentType* program = nullptr;
    if (SLANG_FAILED(session->createCompositeComponentType(parts, 2, &program, &diagnostics)))
        return fail("cannot compose the program", diagnostics);
    slang::IComponentType* linked = nullptr;
    if (SLANG_FAILED(program->link(&linked, &diagnostics)))
        return fail("cannot link the program", diagnostics);
    slang::IBlob* code = nullptr;
    if (SLANG_FAILED(linked->getEntryPointCode(0, 0, &code, &diagnostics)) || !code)
        return fail("no CUDA code for the entry point", diagnostics);

    FILE* out = std::fopen(argv[4], "wb");
    if (!out)
        return fail("cannot write the output", nullptr);
    std::fwrite(code->getBufferPointer(), 1, code->getBufferSize(), out);
    std::fclose(out);
    return 0;
}

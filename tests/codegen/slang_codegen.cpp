// The code Slang generates for compute entry points, with the Slang compiler that slangpy itself
// loads (its libslang-compiler and slang.h), for tests/test_codegen.py: CUDA source, which nvcc can
// then compile (no GPU needed) as slangpy would hand it to NVRTC, or SPIR-V for the Vulkan backend.
//
//   slang_codegen <slang folder> [spirv]  < jobs
// One job per line of standard input, fields separated by tabs: <file.slang> <entry> <out>
// [NAME=VALUE ...]. One global session serves every job (creating it loads Slang's core module,
// the slow part); each job gets a session of its own with its defines. For each job one line on
// standard output: "ok <out>", or "error <out>" followed by Slang's diagnostics on standard
// error. Exit status 0 when every job succeeded.
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "slang.h"

namespace {

// The CUDA source of one job into its output file, or false with the reason on stderr.
bool generate(slang::IGlobalSession* global, const char* folder, SlangCompileTarget format,
              const std::vector<std::string>& fields)
{
    auto fail = [&](const char* what, slang::IBlob* diagnostics) {
        std::cerr << "slang_codegen: " << fields[0] << ":" << fields[1] << ": " << what << "\n";
        if (diagnostics)
            std::cerr << (const char*)diagnostics->getBufferPointer() << "\n";
        return false;
    };
    std::vector<std::string> names, values;
    for (size_t i = 3; i < fields.size(); i++)
    {
        size_t equals = fields[i].find('=');
        names.push_back(fields[i].substr(0, equals));
        values.push_back(equals == std::string::npos ? "1" : fields[i].substr(equals + 1));
    }
    std::vector<slang::PreprocessorMacroDesc> macros;
    for (size_t i = 0; i < names.size(); i++)
        macros.push_back({names[i].c_str(), values[i].c_str()});

    slang::TargetDesc target;
    target.format = format;
    if (format == SLANG_SPIRV)
        target.profile = global->findProfile("spirv_1_5");
    const char* search[] = {folder};
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
    std::string module_name = fields[0];
    if (module_name.size() > 6 && module_name.substr(module_name.size() - 6) == ".slang")
        module_name.resize(module_name.size() - 6);
    slang::IModule* module = session->loadModule(module_name.c_str(), &diagnostics);
    if (!module)
        return fail("the module does not compile", diagnostics);
    slang::IEntryPoint* entry = nullptr;
    if (SLANG_FAILED(module->findEntryPointByName(fields[1].c_str(), &entry)))
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
        return fail("no code for the entry point", diagnostics);

    FILE* out = std::fopen(fields[2].c_str(), "wb");
    if (!out)
        return fail("cannot write the output", nullptr);
    std::fwrite(code->getBufferPointer(), 1, code->getBufferSize(), out);
    std::fclose(out);
    code->release();
    linked->release();
    program->release();
    session->release();
    return true;
}

}  // namespace

int main(int argc, char** argv)
{
    if (argc < 2 || argc > 3 || (argc == 3 && std::string(argv[2]) != "spirv"))
    {
        std::cerr << "usage: slang_codegen <slang folder> [spirv] < jobs (file<TAB>entry<TAB>out[<TAB>NAME=VALUE...])\n";
        return 2;
    }
    SlangCompileTarget format = argc == 3 ? SLANG_SPIRV : SLANG_CUDA_SOURCE;
    slang::IGlobalSession* global = nullptr;
    if (SLANG_FAILED(slang_createGlobalSession(SLANG_API_VERSION, &global)))
    {
        std::cerr << "slang_codegen: cannot create a Slang global session\n";
        return 2;
    }
    bool all = true;
    std::string line;
    while (std::getline(std::cin, line))
    {
        if (line.empty())
            continue;
        std::vector<std::string> fields;
        std::stringstream stream(line);
        std::string field;
        while (std::getline(stream, field, '\t'))
            fields.push_back(field);
        if (fields.size() < 3)
        {
            std::cerr << "slang_codegen: a job needs a file, an entry point and an output: " << line << "\n";
            return 2;
        }
        bool ok = generate(global, argv[1], format, fields);
        std::cout << (ok ? "ok " : "error ") << fields[2] << std::endl;
        all = all && ok;
    }
    return all ? 0 : 1;
}

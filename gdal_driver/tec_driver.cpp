// GDAL raster driver "TEC" for .tec files, and the "tec_zarr.tec" decompressor for GDAL's Zarr driver.
//
// Built per GDAL minor version by `tec gdal-plugin` (tec_zarr/gdal/plugin.py) into gdal_TEC.so; GDAL loads it from
// GDAL_DRIVER_PATH and calls GDALRegister_TEC. Read-only.
//
// Only the magic number is read here. Everything else goes to the installed package's Python
// (tec_zarr/gdal/driver.py), which returns bytes: open() the header as JSON, read_block() one band of one decoded
// tile, decompress() a decoded Zarr chunk. Python is the one already in the process (QGIS, osgeo) or, in the GDAL
// programs, libpython loaded from TEC_ZARR_PYTHONSO (or GDAL's PYTHONSO option) and initialised once. Every call
// holds the GIL (PyGILState_Ensure); a Python exception becomes a GDAL error (CE_Failure), never a crash.

#include "cpl_compressor.h"
#include "cpl_error.h"
#include "cpl_json.h"
#include "cpl_string.h"
#include "cpl_vsi.h"
#include "gdal_pam.h"
#include "ogr_spatialref.h"

#include <dlfcn.h>
#include <sys/types.h>

#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace
{

// --- Python, resolved at run time -------------------------------------------------------------------------------

typedef struct PyObjectOpaque PyObject;
typedef ssize_t Py_ssize_t;

struct PythonAPI
{
    int (*IsInitialized)();
    int (*IsFinalizing)();  // may be null
    void (*SetPythonHome)(const wchar_t *);
    wchar_t *(*DecodeLocale)(const char *, size_t *);
    const char *(*GetVersion)();  // may be null
    void (*InitializeEx)(int);
    void *(*EvalSaveThread)();
    int (*GILStateEnsure)();
    void (*GILStateRelease)(int);
    PyObject *(*ImportModule)(const char *);
    PyObject *(*GetAttrString)(PyObject *, const char *);
    PyObject *(*CallFunctionObjArgs)(PyObject *, ...);
    PyObject *(*LongFromLongLong)(long long);
    PyObject *(*DecodeFSDefault)(const char *);
    PyObject *(*BytesFromStringAndSize)(const char *, Py_ssize_t);
    int (*BytesAsStringAndSize)(PyObject *, char **, Py_ssize_t *);
    const char *(*UnicodeAsUTF8AndSize)(PyObject *, Py_ssize_t *);
    PyObject *(*ObjectStr)(PyObject *);
    void (*DecRef)(PyObject *);
    PyObject *(*ErrOccurred)();
    void (*ErrFetch)(PyObject **, PyObject **, PyObject **);
    void (*ErrNormalize)(PyObject **, PyObject **, PyObject **);
    void (*ErrClear)();
};

PythonAPI py;
std::once_flag pyOnce;
bool pyLoaded = false;  // written once, inside std::call_once
std::string pyError;
PyObject *pyModule = nullptr;  // tec_zarr.gdal.driver, imported with the GIL held, kept for the process's life

const char *const MODULE = "tec_zarr.gdal.driver";
const char *const HINT = "run `tec gdal-plugin` and set the export lines it prints";

template <typename F> bool Resolve(void *lib, const char *name, F &out)
{
    out = reinterpret_cast<F>(dlsym(lib, name));
    return out != nullptr;
}

bool ResolveAll(void *lib, std::string &missing)
{
    bool ok = true;
#define TEC_SYMBOL(field, name)                                                                                       \
    if (!Resolve(lib, name, py.field))                                                                                 \
    {                                                                                                                  \
        ok = false;                                                                                                    \
        missing += std::string(missing.empty() ? "" : ", ") + name;                                                    \
    }
    TEC_SYMBOL(IsInitialized, "Py_IsInitialized")
    TEC_SYMBOL(InitializeEx, "Py_InitializeEx")
    TEC_SYMBOL(EvalSaveThread, "PyEval_SaveThread")
    TEC_SYMBOL(GILStateEnsure, "PyGILState_Ensure")
    TEC_SYMBOL(GILStateRelease, "PyGILState_Release")
    TEC_SYMBOL(ImportModule, "PyImport_ImportModule")
    TEC_SYMBOL(GetAttrString, "PyObject_GetAttrString")
    TEC_SYMBOL(CallFunctionObjArgs, "PyObject_CallFunctionObjArgs")
    TEC_SYMBOL(LongFromLongLong, "PyLong_FromLongLong")
    TEC_SYMBOL(DecodeFSDefault, "PyUnicode_DecodeFSDefault")
    TEC_SYMBOL(BytesFromStringAndSize, "PyBytes_FromStringAndSize")
    TEC_SYMBOL(BytesAsStringAndSize, "PyBytes_AsStringAndSize")
    TEC_SYMBOL(UnicodeAsUTF8AndSize, "PyUnicode_AsUTF8AndSize")
    TEC_SYMBOL(ObjectStr, "PyObject_Str")
    TEC_SYMBOL(DecRef, "Py_DecRef")
    TEC_SYMBOL(ErrOccurred, "PyErr_Occurred")
    TEC_SYMBOL(ErrFetch, "PyErr_Fetch")
    TEC_SYMBOL(ErrNormalize, "PyErr_NormalizeException")
    TEC_SYMBOL(ErrClear, "PyErr_Clear")
#undef TEC_SYMBOL
    Resolve(lib, "Py_SetPythonHome", py.SetPythonHome);  // optional: only for TEC_ZARR_PYTHONHOME (deprecated API)
    Resolve(lib, "Py_DecodeLocale", py.DecodeLocale);
    Resolve(lib, "Py_GetVersion", py.GetVersion);
    if (!Resolve(lib, "Py_IsFinalizing", py.IsFinalizing))  // Python >= 3.13
        Resolve(lib, "_Py_IsFinalizing", py.IsFinalizing);
    return ok;
}

// "TypeName: message" of the pending Python exception, which is cleared. GIL held.
std::string FetchError()
{
    PyObject *type = nullptr, *value = nullptr, *tb = nullptr;
    py.ErrFetch(&type, &value, &tb);
    py.ErrNormalize(&type, &value, &tb);
    std::string text = "Python error";
    if (type)
    {
        if (PyObject *name = py.GetAttrString(type, "__name__"))
        {
            if (const char *s = py.UnicodeAsUTF8AndSize(name, nullptr))
                text = s;
            py.DecRef(name);
        }
    }
    if (value)
    {
        if (PyObject *str = py.ObjectStr(value))
        {
            if (const char *s = py.UnicodeAsUTF8AndSize(str, nullptr))
                text += std::string(": ") + s;
            py.DecRef(str);
        }
    }
    for (PyObject *o : {type, value, tb})
        if (o)
            py.DecRef(o);
    py.ErrClear();
    return text;
}

// Whether the Python home `home` ("prefix[:exec_prefix]", null or "" for none given) holds the standard library of
// the loaded libpython: Python's init ends the whole process ("Fatal Python error") when it does not.
bool HasStdlib(const char *home)
{
    if (home == nullptr || *home == '\0' || py.GetVersion == nullptr)
        return true;
    const std::string version = py.GetVersion();  // "3.11.7 (main, ...)"
    const std::string xy = version.substr(0, version.find('.', version.find('.') + 1));
    const std::string prefix = std::string(home).substr(0, std::string(home).find(':'));
    VSIStatBufL st;
    for (const char *lib : {"/lib/python", "/lib64/python"})  // lib64: Fedora's platlibdir
        for (const char *abi : {"", "t"})                          // t: a free-threaded build
            if (VSIStatL((prefix + lib + xy + abi + "/os.py").c_str(), &st) == 0)
                return true;
    return false;
}

// Loads and initialises Python once per process. No GIL is taken here (only Py_InitializeEx's own, in a process
// without Python), so a host thread holding the GIL while another thread loads can't deadlock.
void LoadPython()
{
    std::string missing;
    void *lib = RTLD_DEFAULT;
    if (dlsym(RTLD_DEFAULT, "Py_IsInitialized") == nullptr)  // no Python in this process yet (the GDAL programs)
    {
        const char *so = CPLGetConfigOption("TEC_ZARR_PYTHONSO", CPLGetConfigOption("PYTHONSO", nullptr));
        if (so == nullptr || *so == '\0')
        {
            pyError = std::string("TEC needs Python: set TEC_ZARR_PYTHONSO to the shared libpython (") + HINT + ")";
            return;
        }
        // RTLD_GLOBAL: the package's extension modules (numpy, onnxruntime) resolve Python's symbols from it.
        lib = dlopen(so, RTLD_NOW | RTLD_GLOBAL);
        if (lib == nullptr)
        {
            pyError = std::string("TEC could not load libpython ") + so + ": " + dlerror() + " (" + HINT + ")";
            return;
        }
    }
    if (!ResolveAll(lib, missing))
    {
        pyError = "TEC could not find these Python functions: " + missing;
        return;
    }
    if (!py.IsInitialized())
    {
        const char *home = CPLGetConfigOption("TEC_ZARR_PYTHONHOME", nullptr);
        const bool setHome = home != nullptr && *home != '\0' && py.SetPythonHome && py.DecodeLocale;
        if (!setHome)
            home = getenv("PYTHONHOME");
        if (!HasStdlib(home))
        {
            pyError = std::string("TEC: the Python home ") + home + " has no standard library of the libpython " +
                      "loaded (" + HINT + ")";
            return;
        }
        if (setHome)
            py.SetPythonHome(py.DecodeLocale(home, nullptr));  // kept: Python keeps the pointer
        py.InitializeEx(0);   // no signal handlers: the GDAL program keeps its own
        py.EvalSaveThread();  // release the GIL; every call below takes it with PyGILState_Ensure
    }
    pyLoaded = true;
}

bool PythonAlive()
{
    return pyLoaded && py.IsInitialized() && !(py.IsFinalizing && py.IsFinalizing());
}

// One argument of a call: an integer, a file path (decoded like os.fsdecode) or bytes.
struct Arg
{
    enum Kind { INT, PATH, BYTES } kind;
    long long i;
    const char *p;
    size_t n;
    static Arg Int(long long v) { return {INT, v, nullptr, 0}; }
    static Arg Path(const char *s) { return {PATH, 0, s, 0}; }
    static Arg Bytes(const void *d, size_t size) { return {BYTES, 0, static_cast<const char *>(d), size}; }
};

// tec_zarr.gdal.driver.<func>(*args) with the GIL held; a bytes result goes to *out. On failure: a GDAL
// error (CE_Failure) and false.
bool CallPython(const char *func, std::initializer_list<Arg> args, std::string *out)
{
    std::call_once(pyOnce, LoadPython);
    if (!pyLoaded)
    {
        CPLError(CE_Failure, CPLE_AppDefined, "%s", pyError.c_str());
        return false;
    }
    if (!PythonAlive())
    {
        CPLError(CE_Failure, CPLE_AppDefined, "TEC: Python has shut down in this process");
        return false;
    }
    const int gil = py.GILStateEnsure();
    if (pyModule == nullptr && (pyModule = py.ImportModule(MODULE)) == nullptr)
    {
        const std::string error = FetchError();
        py.GILStateRelease(gil);
        CPLError(CE_Failure, CPLE_AppDefined, "TEC could not import %s: %s (%s)", MODULE, error.c_str(), HINT);
        return false;
    }
    std::vector<PyObject *> values;
    bool ok = true;
    for (const Arg &a : args)
    {
        PyObject *v = a.kind == Arg::INT    ? py.LongFromLongLong(a.i)
                      : a.kind == Arg::PATH ? py.DecodeFSDefault(a.p)
                                            : py.BytesFromStringAndSize(a.p, static_cast<Py_ssize_t>(a.n));
        ok = ok && v != nullptr;
        values.push_back(v);
    }
    values.resize(6, nullptr);  // NULL-terminated argument list (at most 5 arguments)
    std::string error;
    PyObject *callable = ok ? py.GetAttrString(pyModule, func) : nullptr;
    PyObject *result = callable ? py.CallFunctionObjArgs(callable, values[0], values[1], values[2], values[3],
                                                         values[4], values[5])
                                : nullptr;
    if (result != nullptr && out != nullptr)
    {
        char *data = nullptr;
        Py_ssize_t size = 0;
        // bytes only, even for open()'s JSON: a str of the right length must not pass for a block's pixels.
        if (py.BytesAsStringAndSize(result, &data, &size) == 0)
            out->assign(data, static_cast<size_t>(size));
        else
        {
            py.ErrClear();
            error = std::string("TypeError: ") + MODULE + "." + func + " did not return bytes";
        }
    }
    if (result == nullptr || py.ErrOccurred())
        error = FetchError();
    for (PyObject *o : values)
        if (o)
            py.DecRef(o);
    if (callable)
        py.DecRef(callable);
    if (result)
        py.DecRef(result);
    py.GILStateRelease(gil);
    if (!error.empty())
    {
        CPLError(CE_Failure, CPLE_AppDefined, "TEC: %s", error.c_str());
        return false;
    }
    return true;
}

// --- The raster driver ----------------------------------------------------------------------------------------

class TECRasterBand;

class TECDataset final : public GDALPamDataset
{
    friend class TECRasterBand;

    long long m_handle = 0;  // the open file in tec_zarr.gdal.driver, shared by the overview datasets
    int m_level = 0;
    bool m_ownsHandle = false;
    bool m_hasGeoTransform = false;
    double m_geoTransform[6] = {0, 1, 0, 0, 0, 1};
    OGRSpatialReference m_srs;
    std::vector<std::unique_ptr<TECDataset>> m_overviews;

  public:
    ~TECDataset() override;
    static int Identify(GDALOpenInfo *poOpenInfo);
    static GDALDataset *Open(GDALOpenInfo *poOpenInfo);

    CPLErr GetGeoTransform(double *gt) override
    {
        memcpy(gt, m_geoTransform, sizeof(m_geoTransform));
        return m_hasGeoTransform ? CE_None : CE_Failure;
    }
    const OGRSpatialReference *GetSpatialRef() const override
    {
        return m_srs.IsEmpty() ? nullptr : &m_srs;
    }
};

class TECRasterBand final : public GDALPamRasterBand
{
    int m_level;
    bool m_hasNoData;
    double m_noData;
    bool m_hasRadiometry = false;  // value = stored x scale + offset, as the file states (its source's radiometry)
    double m_scale = 1.0;
    double m_offset = 0.0;

  public:
    TECRasterBand(TECDataset *ds, int band, GDALDataType type, int tile, bool hasNoData, double noData)
        : m_level(ds->m_level), m_hasNoData(hasNoData), m_noData(noData)
    {
        poDS = ds;
        nBand = band;
        eDataType = type;
        nBlockXSize = tile;
        nBlockYSize = tile;
    }

    CPLErr IReadBlock(int bx, int by, void *image) override
    {
        auto *ds = static_cast<TECDataset *>(poDS);
        std::string data;
        if (!CallPython("read_block", {Arg::Int(ds->m_handle), Arg::Int(m_level), Arg::Int(nBand), Arg::Int(by),
                                       Arg::Int(bx)},
                        &data))
            return CE_Failure;
        const size_t expected =
            static_cast<size_t>(nBlockXSize) * nBlockYSize * GDALGetDataTypeSizeBytes(eDataType);
        if (data.size() != expected)
        {
            CPLError(CE_Failure, CPLE_AppDefined, "TEC: expected %zu bytes for block (%d, %d). Got %zu instead.",
                     expected, bx, by, data.size());
            return CE_Failure;
        }
        memcpy(image, data.data(), expected);
        return CE_None;
    }

    double GetNoDataValue(int *pbSuccess) override
    {
        if (pbSuccess)
            *pbSuccess = m_hasNoData;
        return m_hasNoData ? m_noData : 0.0;
    }

    void SetRadiometry(double scale, double offset)  // not SetScale/SetOffset: those are PAM changes (.aux.xml)
    {
        m_hasRadiometry = true;
        m_scale = scale;
        m_offset = offset;
    }

    // The file's own scale and offset where it states them, else whatever PAM (a user's .aux.xml) says.
    double GetScale(int *pbSuccess) override
    {
        if (!m_hasRadiometry)
            return GDALPamRasterBand::GetScale(pbSuccess);
        if (pbSuccess)
            *pbSuccess = TRUE;
        return m_scale;
    }

    double GetOffset(int *pbSuccess) override
    {
        if (!m_hasRadiometry)
            return GDALPamRasterBand::GetOffset(pbSuccess);
        if (pbSuccess)
            *pbSuccess = TRUE;
        return m_offset;
    }

    // The file's own levels; a file written without them gets GDAL's external ones (gdaladdo -ro: scene.tec.ovr).
    int GetOverviewCount() override
    {
        auto *ds = static_cast<TECDataset *>(poDS);
        if (m_level != 0)
            return 0;
        return ds->m_overviews.empty() ? GDALPamRasterBand::GetOverviewCount()
                                       : static_cast<int>(ds->m_overviews.size());
    }

    GDALRasterBand *GetOverview(int i) override
    {
        auto *ds = static_cast<TECDataset *>(poDS);
        if (m_level != 0)
            return nullptr;
        if (ds->m_overviews.empty())
            return GDALPamRasterBand::GetOverview(i);
        if (i < 0 || i >= static_cast<int>(ds->m_overviews.size()))
            return nullptr;
        return ds->m_overviews[i]->GetRasterBand(nBand);
    }
};

TECDataset::~TECDataset()
{
    FlushCache(true);  // PAM statistics go to scene.tec.aux.xml; the .tec itself is never written
    m_overviews.clear();
    if (m_ownsHandle && PythonAlive())
        CallPython("close", {Arg::Int(m_handle)}, nullptr);
}

int TECDataset::Identify(GDALOpenInfo *poOpenInfo)
{
    return poOpenInfo->nHeaderBytes >= 12 && memcmp(poOpenInfo->pabyHeader, "TECF", 4) == 0;
}

GDALDataset *TECDataset::Open(GDALOpenInfo *poOpenInfo)
{
    if (!Identify(poOpenInfo))
        return nullptr;
    if (poOpenInfo->eAccess == GA_Update)
    {
        CPLError(CE_Failure, CPLE_NotSupported, "TEC: .tec files are read-only in GDAL");
        return nullptr;
    }
    if (STARTS_WITH(poOpenInfo->pszFilename, "/vsi"))
    {
        CPLError(CE_Failure, CPLE_NotSupported, "TEC: reads local files only, not %s", poOpenInfo->pszFilename);
        return nullptr;
    }
    std::string json;
    if (!CallPython("open", {Arg::Path(poOpenInfo->pszFilename)}, &json))
        return nullptr;
    CPLJSONDocument doc;
    if (!doc.LoadMemory(json))
        return nullptr;
    const CPLJSONObject root = doc.GetRoot();
    auto ds = std::make_unique<TECDataset>();
    ds->m_handle = root.GetLong("handle");
    ds->m_ownsHandle = true;
    const int bands = root.GetInteger("bands");
    const int tile = root.GetInteger("tile");
    const GDALDataType type = GDALGetDataTypeByName(root.GetString("data_type").c_str());
    const std::string noDataText = root.GetString("nodata");
    const bool hasNoData = root["nodata"].GetType() == CPLJSONObject::Type::String;
    const double noData = hasNoData ? CPLAtof(noDataText.c_str()) : 0.0;
    const CPLJSONArray names = root.GetArray("band_names");
    const CPLJSONArray scales = root.GetArray("scales");  // absent: the file states none
    const CPLJSONArray offsets = root.GetArray("offsets");
    const bool hasRadiometry =
        scales.IsValid() && offsets.IsValid() && scales.Size() == bands && offsets.Size() == bands;
    const CPLJSONArray gt = root.GetArray("geotransform");
    const CPLJSONArray levels = root.GetArray("levels");
    const std::string wkt = root.GetString("crs_wkt");
    // Our Python wrote this, but a malformed description must be an error, not a crash: json-c aborts on an
    // absent array, a level of 31+ makes 1 << level undefined, a 0-sized level is no raster. tile <= 4096 is the
    // format's limit (tecfile.parse_tile) and keeps the block byte counts far from overflowing.
    bool valid = bands > 0 && tile > 0 && tile <= 4096 && type != GDT_Unknown && levels.Size() >= 1 &&
                 names.Size() == bands;
    for (int i = 0; valid && i < levels.Size(); i++)
    {
        const CPLJSONArray level = levels[i].ToArray();
        const int k = level.Size() == 3 ? level[0].ToInteger(-1) : -1;  // Size() is 0 for a non-array
        valid = k >= 0 && k <= 30 && level[1].ToInteger() > 0 && level[2].ToInteger() > 0;
    }
    if (!valid)
    {
        CPLError(CE_Failure, CPLE_AppDefined, "TEC: unexpected description of %s", poOpenInfo->pszFilename);
        return nullptr;
    }
    for (int i = 0; i < levels.Size(); i++)
    {
        const CPLJSONArray level = levels[i].ToArray();
        TECDataset *target = ds.get();
        if (i > 0)
        {
            ds->m_overviews.push_back(std::make_unique<TECDataset>());
            target = ds->m_overviews.back().get();
            target->m_handle = ds->m_handle;
        }
        target->m_level = level[0].ToInteger();
        target->nRasterXSize = level[1].ToInteger();
        target->nRasterYSize = level[2].ToInteger();
        const double f = static_cast<double>(1 << target->m_level);
        if (gt.IsValid() && gt.Size() == 6)
        {
            target->m_hasGeoTransform = true;
            for (int k = 0; k < 6; k++)
                target->m_geoTransform[k] = gt[k].ToDouble() * (k == 0 || k == 3 ? 1.0 : f);
        }
        if (!wkt.empty())
        {
            target->m_srs.SetAxisMappingStrategy(OAMS_TRADITIONAL_GIS_ORDER);
            target->m_srs.importFromWkt(wkt.c_str());
        }
        for (int b = 1; b <= bands; b++)
        {
            auto *band = new TECRasterBand(target, b, type, tile, hasNoData, noData);
            band->GDALRasterBand::SetDescription(names[b - 1].ToString().c_str());  // not a PAM change
            if (hasRadiometry)
                band->SetRadiometry(scales[b - 1].ToDouble(1.0), offsets[b - 1].ToDouble(0.0));
            target->SetBand(b, band);
        }
        target->GDALDataset::SetMetadataItem("INTERLEAVE", "PIXEL", "IMAGE_STRUCTURE");
    }
    for (const CPLJSONObject &item : root.GetObj("metadata").GetChildren())
        ds->GDALDataset::SetMetadataItem(item.GetName().c_str(), item.ToString().c_str());
    ds->SetDescription(poOpenInfo->pszFilename);
    ds->TryLoadXML(poOpenInfo->GetSiblingFiles());
    if (ds->m_overviews.empty())  // external overviews (scene.tec.ovr) for files written without levels
        ds->oOvManager.Initialize(ds.get(), poOpenInfo->pszFilename, poOpenInfo->GetSiblingFiles());
    return ds.release();
}

// --- The Zarr decompressor ------------------------------------------------------------------------------------

// CPLCompressionFunc for "tec_zarr.tec": the three calling modes of cpl_compressor.h.
bool Decompress(const void *input, size_t inputSize, void **output, size_t *outputSize, CSLConstList, void *)
{
    if (outputSize == nullptr)
        return false;
    const bool given = output != nullptr && *output != nullptr;
    std::string data;
    if (!CallPython("decompress", {Arg::Bytes(input, inputSize), Arg::Int(given ? *outputSize : 0)}, &data))
    {
        *outputSize = 0;
        return false;
    }
    if (output == nullptr)
    {
        *outputSize = data.size();
        return true;
    }
    if (!given)
    {
        *output = VSI_MALLOC_VERBOSE(data.size() ? data.size() : 1);
        if (*output == nullptr)
            return false;
    }
    else if (data.size() != *outputSize)  // a shorter chunk would leave the rest of GDAL's buffer stale
    {
        CPLError(CE_Failure, CPLE_AppDefined, "TEC: a chunk of %zu bytes where GDAL expects %zu", data.size(),
                 *outputSize);
        *outputSize = data.size();
        return false;
    }
    memcpy(*output, data.data(), data.size());
    *outputSize = data.size();
    return true;
}

// GDAL's Zarr driver wants a compressor too before it opens an array: this one refuses (the plug-in is read-only).
bool Compress(const void *, size_t, void **, size_t *outputSize, CSLConstList, void *)
{
    CPLError(CE_Failure, CPLE_NotSupported, "TEC: GDAL cannot write TEC chunks; write them with tec-zarr");
    if (outputSize)
        *outputSize = 0;
    return false;
}

}  // namespace

extern "C" void CPL_DLL GDALRegister_TEC()
{
    if (!GDAL_CHECK_VERSION("TEC"))
        return;
    if (CPLGetDecompressor("tec_zarr.tec") == nullptr)
    {
        static const CPLCompressor decompressor = {1, "tec_zarr.tec", CCT_COMPRESSOR, nullptr, Decompress, nullptr};
        CPLRegisterDecompressor(&decompressor);
    }
    if (CPLGetCompressor("tec_zarr.tec") == nullptr)
    {
        static const CPLCompressor compressor = {1, "tec_zarr.tec", CCT_COMPRESSOR, nullptr, Compress, nullptr};
        CPLRegisterCompressor(&compressor);
    }
    if (GDALGetDriverByName("TEC") != nullptr)
        return;
    auto *driver = new GDALDriver();
    driver->SetDescription("TEC");
    driver->SetMetadataItem(GDAL_DCAP_RASTER, "YES");
    driver->SetMetadataItem(GDAL_DMD_LONGNAME, "TEC learned-compression raster (tec-zarr)");
    driver->SetMetadataItem(GDAL_DMD_EXTENSION, "tec");
    driver->pfnIdentify = TECDataset::Identify;
    driver->pfnOpen = TECDataset::Open;
    GetGDALDriverManager()->RegisterDriver(driver);
}
